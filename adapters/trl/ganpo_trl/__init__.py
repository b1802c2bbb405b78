"""TRL adapter of ganpo-plugins: attach a latent regularizer to a live ``trl.DPOTrainer``,
``trl.experimental.cpo.CPOTrainer``, ``trl.experimental.online_dpo.OnlineDPOTrainer``, ``trl.GRPOTrainer``
or ``trl.RLOOTrainer`` with one call (see :func:`attach_regularizer`)."""

from .attach import GANPOAttachment, attach_regularizer
from .grpo import OnlineRLAttachment
from .online import OnlineDPOAttachment

__all__ = ["GANPOAttachment", "OnlineDPOAttachment", "OnlineRLAttachment", "attach_regularizer"]
