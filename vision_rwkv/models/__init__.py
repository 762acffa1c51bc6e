"""Vision-RWKV models; importing this package registers them in timm."""
from .vrwkv import VRWKV, Block, checkpoint_filter_fn
from .vrwkv6 import BlockV6
from .vrwkv_adapter import VRWKVAdapter, backbone_checkpoint_filter, load_backbone_checkpoint

__all__ = ['VRWKV', 'VRWKVAdapter', 'Block', 'BlockV6', 'backbone_checkpoint_filter', 'checkpoint_filter_fn',
           'load_backbone_checkpoint']
