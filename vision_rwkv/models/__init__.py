"""Vision-RWKV models; importing this package registers them in timm."""
from .vrwkv import VRWKV, Block, checkpoint_filter_fn

__all__ = ['VRWKV', 'Block', 'checkpoint_filter_fn']
