"""ONNX export of the VRWKV backbones, and their check in onnxruntime.

    model = timm.create_model('vrwkv_tiny_patch16_224', pretrained=..., dynamic_img_size=True)
    export_onnx(model, 'vrwkv_t.onnx')                   # dynamic batch, height and width
    check_onnx(model, 'vrwkv_t.onnx', sizes=[(224, 224), (320, 256), (512, 512)])

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``). While it traces,
``bi_wkv`` and ``bi_wkv_2d`` compute Bi-WKV from standard ops (``kernels.bi_wkv_export``: cumulative sums in
float64, no loop, O(T) memory), so one graph serves every input size. The Triton and chunked training paths are
not touched; VRWKV6's ``bi_wkv6`` carries its states across chunks with an ONNX ``Scan`` (``kernels.wkv6_export``).
"""
import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vision_rwkv.errors import ExportError
from vision_rwkv.kernels.wkv6_torch import CHUNK as WKV6_CHUNK
from vision_rwkv_runtime.onnx import onnx_metadata, onnx_session, relative_error, require

__all__ = ['DEFAULT_OPSET', 'check_onnx', 'export_graph', 'export_onnx', 'onnx_metadata', 'onnx_session',
           'patch_embed_of', 'relative_error', 'state_fingerprint']

#: ONNX opset of the exports (``CumSum``, ``LayerNormalization`` and ``Resize``'s cubic mode need >= 17).
DEFAULT_OPSET = 18
#: Largest grid side (in patches) the exported graph is declared for.
MAX_GRID = 1024


def patch_embed_of(model: nn.Module) -> nn.Module:
    """The patch embedding of a VRWKV model, or of the one inside timm's ``features_only`` wrapper."""
    patch_embed = getattr(model, 'patch_embed', None) or getattr(getattr(model, 'model', None), 'patch_embed', None)
    if patch_embed is None or not hasattr(patch_embed, 'strict_img_size'):
        raise ExportError(f'export_onnx takes VRWKV backbones (a model with a patch_embed), got '
                          f'{type(model).__name__}')
    return patch_embed


def _has_v6_blocks(model: nn.Module) -> bool:
    from vision_rwkv.layers.spatial_mix_v6 import SpatialMixV6
    return any(isinstance(m, SpatialMixV6) for m in model.modules())


def _check_exportable(model: nn.Module) -> Tuple[int, int]:
    """The patch size and input channels of a VRWKV backbone that can be exported at any size."""
    patch_embed = patch_embed_of(model)
    if patch_embed.strict_img_size:
        raise ExportError('the model accepts only its img_size: create it with dynamic_img_size=True to export a '
                          'graph for every input size')
    return patch_embed.patch_size[0], patch_embed.projection.in_channels


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex, 16 digits) of the names and values of ``module``'s state dict: exports write it into their
    metadata, so that files of one model can be told from files of another."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _output_names(outputs) -> List[str]:
    if isinstance(outputs, torch.Tensor):
        return ['logits' if outputs.dim() == 2 else 'features']
    return [f'features_{i}' for i in range(len(outputs))]


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], img_size: Union[int, Sequence[int]] = 224,
                opset: int = DEFAULT_OPSET, input_name: str = 'images', optimize: bool = True) -> Path:
    """Export ``model`` (images -> logits, or a list of feature maps for ``features_only``) to ONNX.

    Args:
        model: a VRWKV backbone created with ``dynamic_img_size=True`` (a timm model, ``features_only`` or not).
        path: the .onnx file to write (one file: weights inside), written atomically.
        img_size: the (H, W) of the traced example; the graph takes any batch and any H, W that are multiples of
            the patch size (``dynamic_img_pad=True`` models also pad other sizes).
        opset: ONNX opset (>= 17).
        input_name: name of the (B, 3, H, W) float32 input.
        optimize: run onnxscript's graph optimizer (constant folding, fusions) on the export; about a third of
            the export time, and onnxruntime optimizes the graph again when it loads it.

    Returns:
        The path written. Outputs are named ``logits`` (B, classes), ``features`` (B, N, D) or
        ``features_<i>`` (B, D, H/p, W/p), with dims 'batch', '<p>*grid_h', '<p>*grid_w'.
    """
    patch, in_chans = _check_exportable(model)
    H, W = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if H % patch or W % patch or H < 2 * patch or W < 2 * patch:
        raise ExportError(f'img_size {H}x{W}: give multiples of the patch size {patch}, at least {2 * patch}')
    if _has_v6_blocks(model) and (H // patch) * (W // patch) <= WKV6_CHUNK:
        raise ExportError(f'img_size {H}x{W}: trace VRWKV6 models at a size of more than {WKV6_CHUNK} tokens '
                          f'(two chunks of bi_wkv6), e.g. {patch * 5}x{patch * 5}; the graph then takes any size')
    model = model.eval()
    example = torch.randn(2, in_chans, H, W)  # batch 2: torch.export specialises dims of size 1
    batch = torch.export.Dim('batch', min=1, max=1 << 16)
    grid_h = torch.export.Dim('grid_h', min=2, max=MAX_GRID)
    grid_w = torch.export.Dim('grid_w', min=2, max=MAX_GRID)
    with torch.no_grad():
        names = _output_names(model(example))
    metadata = {'vision_rwkv.kind': 'vrwkv_backbone', 'vision_rwkv.fingerprint': state_fingerprint(model)}
    return export_graph(model, (example,), path, [input_name], names,
                        ({0: batch, 2: patch * grid_h, 3: patch * grid_w},), opset, optimize, metadata)


def export_graph(module: nn.Module, args: Tuple[torch.Tensor, ...], path: Union[str, os.PathLike],
                 input_names: Sequence[str], output_names: Sequence[str], dynamic_shapes: Tuple,
                 opset: int = DEFAULT_OPSET, optimize: bool = True, metadata: Optional[Dict[str, str]] = None,
                 output_dims: Optional[Dict[str, Dict[int, str]]] = None) -> Path:
    """``torch.onnx.export(module, args, dynamo=True)`` into one file written atomically, with ``metadata`` as
    the model's ``metadata_props`` and the dynamic dims of outputs named as ``output_dims`` says
    ({output: {axis: name}}: dims that depend on input values get generated names otherwise). Returns the path."""
    onnx = require('onnx')
    require('onnxscript')
    if opset < 17:
        raise ExportError(f'opset {opset} is too old: Bi-WKV needs CumSum and LayerNormalization (opset >= 17)')
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    try:
        with torch.no_grad():
            torch.onnx.export(module, args, str(tmp), dynamo=True, opset_version=opset, external_data=False,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=dynamic_shapes, optimize=optimize, verbose=False)
        if metadata or output_dims:
            model = onnx.load(str(tmp))
            onnx.helper.set_model_props(model, metadata or {})
            for output in model.graph.output:
                for axis, name in (output_dims or {}).get(output.name, {}).items():
                    output.type.tensor_type.shape.dim[axis].dim_param = name
            onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_onnx(model: nn.Module, path: Union[str, os.PathLike], sizes: Sequence[Sequence[int]], batch: int = 1,
               seed: int = 0) -> List[Dict]:
    """Run the ONNX file in onnxruntime and ``model`` in PyTorch (float32) on the same random images.

    Returns one row per size: {'size': (H, W), 'batch': B, 'rel_err': worst relative_error over the outputs}.
    """
    session = onnx_session(path)
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    in_chans = patch_embed_of(model).projection.in_channels
    rows = []
    for H, W in sizes:
        x = torch.randn(batch, in_chans, H, W, generator=generator)
        with torch.no_grad():
            ref = model.eval()(x)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        outs = session.run(None, {input_name: x.numpy()})
        err = max(relative_error(o, r.numpy()) for o, r in zip(outs, refs))
        rows.append(dict(size=(H, W), batch=batch, rel_err=err))
    return rows
