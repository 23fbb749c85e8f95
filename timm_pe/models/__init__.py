"""Model definitions; importing registers their entrypoints in timm."""
from . import vit
from . import swin

__all__ = ['swin', 'vit']
