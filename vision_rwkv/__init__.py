"""vision_rwkv: RWKV vision backbones with Triton Bi-WKV kernels.

``import vision_rwkv`` registers the VRWKV models in timm (``timm.create_model('vrwkv_tiny_patch16_224')``).
"""
from .version import __version__
from . import kernels, layers, models
from .models import VRWKV

__all__ = ['__version__', 'VRWKV', 'kernels', 'layers', 'models']
