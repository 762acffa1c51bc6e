"""Deployment: ONNX export of the VRWKV backbones and of RWKV-SAM, and their checks in onnxruntime (the ``deploy``
extra). The exported RWKV-SAM runs without torch in ``vision_rwkv_runtime``."""
from .onnx import (DEFAULT_OPSET, check_onnx, export_graph, export_onnx, onnx_metadata, onnx_session, patch_embed_of,
                   relative_error, state_fingerprint)
from .sam_onnx import SamOnnxDecoder, SamOnnxEncoder, check_sam_onnx, default_prompts, export_sam_onnx

__all__ = ['DEFAULT_OPSET', 'SamOnnxDecoder', 'SamOnnxEncoder', 'check_onnx', 'check_sam_onnx', 'default_prompts',
           'export_graph', 'export_onnx', 'export_sam_onnx', 'onnx_metadata', 'onnx_session', 'patch_embed_of',
           'relative_error', 'state_fingerprint']
