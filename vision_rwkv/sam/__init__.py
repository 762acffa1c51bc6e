"""RWKV-SAM: segment anything with an RWKV image encoder, behind segment-anything's API.

    from vision_rwkv.sam import RWKVSamPredictor, rwkv_sam_model_registry
    sam = rwkv_sam_model_registry['small'](checkpoint='rwkv_sam_small.pth')
    predictor = RWKVSamPredictor(sam)
    predictor.set_image(image)                    # (H, W, 3) uint8 RGB
    masks, scores, logits = predictor.predict(point_coords=[[x, y]], point_labels=[1])

The model also works with segment-anything's own ``SamPredictor`` and ``SamAutomaticMaskGenerator``.
"""
from .automatic_mask_generator import RWKVSamAutomaticMaskGenerator
from .build import build_rwkv_sam, build_rwkv_sam_from_cfg, load_rwkv_sam_checkpoint, rwkv_sam_model_registry
from .modeling.image_encoder import ImageFeatures, RWKVSamImageEncoder
from .modeling.mask_decoder import MultiScaleMaskDecoder
from .modeling.prompt_encoder import PromptEncoder
from .modeling.sam import RWKVSam
from .modeling.transformer import TwoWayTransformer
from .predictor import RWKVSamPredictor

__all__ = ['ImageFeatures', 'MultiScaleMaskDecoder', 'PromptEncoder', 'RWKVSam', 'RWKVSamAutomaticMaskGenerator',
           'RWKVSamImageEncoder', 'RWKVSamPredictor', 'TwoWayTransformer', 'build_rwkv_sam', 'build_rwkv_sam_from_cfg',
           'load_rwkv_sam_checkpoint', 'rwkv_sam_model_registry']
