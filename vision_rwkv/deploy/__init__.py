"""Deployment: ONNX export of the VRWKV backbones and their check in onnxruntime (the ``deploy`` extra)."""
from .onnx import (DEFAULT_OPSET, check_onnx, export_onnx, onnx_metadata, onnx_session, patch_embed_of,
                   relative_error)

__all__ = ['DEFAULT_OPSET', 'check_onnx', 'export_onnx', 'onnx_metadata', 'onnx_session', 'patch_embed_of',
           'relative_error']
