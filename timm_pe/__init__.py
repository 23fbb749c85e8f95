"""timm-pe: position encodings for vision transformers as a timm plugin.

``import timm_pe`` registers every model; build them with ``timm.create_model``.
"""
from . import models
from .ops import apply_rope

__version__ = '0.1.0'
__all__ = ['apply_rope', 'models']
