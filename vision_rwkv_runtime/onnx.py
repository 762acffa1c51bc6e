"""onnxruntime sessions and ONNX file metadata, with clear errors for missing packages and files."""
import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .errors import ExportError, InputFileError

__all__ = ['DEPLOY_EXTRA', 'custom_metadata', 'onnx_metadata', 'onnx_session', 'relative_error', 'require']

DEPLOY_EXTRA = 'pip install -e ".[deploy]"'


def require(module: str):
    """Import an optional deployment dependency, or say which extra installs it."""
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f'{module} is not installed: {DEPLOY_EXTRA}') from None


def onnx_metadata(path: Union[str, os.PathLike]) -> Dict:
    """Opset, inputs, outputs and metadata of an ONNX file: {'opset': int, 'inputs': {name: [dim, ...]},
    'outputs': ..., 'metadata': {key: value}}; a dim is an int or the name of a dynamic axis."""
    onnx = require('onnx')
    if not Path(path).is_file():
        raise InputFileError(f'{path}: no such ONNX file')
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for files that are not ONNX
        raise ExportError(f'{path} is not an ONNX model ({type(e).__name__}: {e})') from None
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    opset = next((o.version for o in m.opset_import if o.domain in ('', 'ai.onnx')), None)
    return dict(opset=opset, inputs={v.name: dims(v) for v in m.graph.input},
                outputs={v.name: dims(v) for v in m.graph.output},
                metadata={p.key: p.value for p in m.metadata_props})


def onnx_session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An onnxruntime CPU ``InferenceSession`` of ``path`` (``threads``: intra-op threads, default all)."""
    ort = require('onnxruntime')
    if not Path(path).is_file():
        raise InputFileError(f'{path}: no such ONNX file')
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf for files that are not ONNX
        raise ExportError(f'{path} is not an ONNX model onnxruntime can load ({type(e).__name__}: '
                          f'{str(e).strip().splitlines()[-1] if str(e).strip() else e})') from None


def custom_metadata(session) -> Dict[str, str]:
    """The ``metadata_props`` of a session's model (what the exporters wrote under ``vision_rwkv.*`` keys)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref|| (Frobenius), in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), np.finfo(np.float64).tiny))
