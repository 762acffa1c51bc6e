"""vision_rwkv_runtime: run models exported by ``vision_rwkv`` with onnxruntime, numpy and Pillow alone (no torch).

    from vision_rwkv_runtime import OnnxSamPredictor
    predictor = OnnxSamPredictor('rwkv_sam_encoder.onnx', 'rwkv_sam_decoder.onnx')
    predictor.set_image(image)                    # (H, W, 3) uint8 RGB
    masks, scores, logits = predictor.predict(point_coords=[[x, y]], point_labels=[1])

The export side (torch) is ``vision_rwkv.deploy``. This package also holds what both sides share and torch does
not need: the user-error classes (``errors``), the tools' exit convention (``cli``) and atomic writes (``files``).
"""
from .sam import OnnxSamPredictor

__all__ = ['OnnxSamPredictor']
