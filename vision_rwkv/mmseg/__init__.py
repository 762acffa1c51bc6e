"""mmsegmentation integration of vision_rwkv: import it (configs: ``custom_imports``) to register

* backbones ``VRWKV`` (block outputs at ``out_indices``) and ``VRWKV_Adapter`` (the official 4-level
  ViT-Adapter pyramid for UperNet) in mmseg's ``MODELS``, and their VRWKV6 counterparts ``VRWKV6`` and
  ``VRWKV6_Adapter``,
* the data set builder ``EmbeddedDataset`` (writes the embedded segmentation set, then builds e.g.
  mmseg's own ``ADE20KDataset`` on it) and the transform ``LoadCheckedAnnotations`` (mmseg's
  ``LoadAnnotations`` plus clear errors for bad label files),

and to offer ``segment_image`` (config + checkpoint + image file -> labels and an overlay PNG).
"""
import vision_rwkv.engine  # noqa: F401  (checkpoint loading, optimizer constructor, hooks)

from .backbones import MMSegVRWKV, MMSegVRWKV6, MMSegVRWKV6Adapter, MMSegVRWKVAdapter
from .datasets import LoadCheckedAnnotations, embedded_dataset
from .inference import segment_image

__all__ = ['LoadCheckedAnnotations', 'MMSegVRWKV', 'MMSegVRWKV6', 'MMSegVRWKV6Adapter', 'MMSegVRWKVAdapter',
           'embedded_dataset', 'segment_image']
