"""TRL adapter of ganpo-plugins: attach a latent regularizer to a live ``trl.DPOTrainer`` or
``trl.experimental.cpo.CPOTrainer`` with one call (see :func:`attach_regularizer`)."""

from .attach import GANPOAttachment, attach_regularizer
from .settings import BaseLoss, TRLSettings

__all__ = ["BaseLoss", "GANPOAttachment", "TRLSettings", "attach_regularizer"]
