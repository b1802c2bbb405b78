"""TRL adapter of ganpo-plugins: attach a latent regularizer to a live ``trl.DPOTrainer``,
``trl.experimental.cpo.CPOTrainer`` or ``trl.experimental.online_dpo.OnlineDPOTrainer`` with one
call (see :func:`attach_regularizer`)."""

from .attach import GANPOAttachment, attach_regularizer
from .online import OnlineDPOAttachment

__all__ = ["GANPOAttachment", "OnlineDPOAttachment", "attach_regularizer"]
