"""ONNX export of RWKV-SAM: the image encoder and the prompt decoder, as two files (segment-anything's convention).

    sam = build_rwkv_sam('tiny', 'rwkv_sam_tiny.pth')
    export_sam_onnx(sam, 'encoder.onnx', 'decoder.onnx')
    check_sam_onnx(sam, 'encoder.onnx', 'decoder.onnx', image)       # masks against RWKVSamPredictor's

**Encoder** ``image`` (B, 3, h, w) float32 RGB in 0..255, resized so that max(h, w) = ``img_size`` (segment-
anything's ``ResizeLongestSide``; any h, w up to it) -> ``image_embeddings`` (B, 256, S/16, S/16) and
``multiscale_features`` (B, 64 or 32, S/4, S/4) (decoder fusion 'mix' or 'add'), S = ``img_size``. The graph
normalises and pads as ``RWKVSam.preprocess``. ``multiscale_features`` is the image-only part of the decoder's multiscale fusion
(``MultiScaleMaskDecoder.image_fusion``: the stride-4 and stride-8 maps projected and mixed), so the decoder
pays it once per image, not once per prompt.

**Decoder** (segment-anything's ``SamOnnxModel`` inputs, plus ``multiscale_features``), one object per call:

- ``image_embeddings`` (1, 256, S/16, S/16) and ``multiscale_features`` (1, 64 or 32, S/4, S/4) from the encoder;
- ``point_coords`` (1, N, 2) float32 x, y in the resized frame (``ResizeLongestSide.apply_coords``) and
  ``point_labels`` (1, N) float32: 1 foreground, 0 background, 2 / 3 a box's top-left / bottom-right corner,
  -1 padding (append one (0, 0) point with label -1 when there is no box);
- ``mask_input`` (1, 1, S/4, S/4) low-resolution logits and ``has_mask_input`` (1,) 1.0 or 0.0;
- ``orig_im_size`` (2,) float32 (H, W) of the original image.

Outputs: ``masks`` (1, 4, H, W) logits at the original size (threshold at 0), ``iou_predictions`` (1, 4) and
``low_res_masks`` (1, 4, S/4, S/4). Index 0 is the single-mask output, 1..3 the multimask outputs (as
``RWKVSamPredictor.predict`` with ``multimask_output`` False / True).

Both files carry metadata (``vision_rwkv.*`` keys, ``onnx_metadata``): the kind, ``img_size``, the architecture in
words and a fingerprint of the weights, so that the runtime (``vision_rwkv_runtime.sam``) refuses an encoder and a
decoder of different models.
"""
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.errors import ExportError
from vision_rwkv.sam.modeling.sam import RWKVSam
from vision_rwkv.sam.predictor import RWKVSamPredictor
from vision_rwkv_runtime.onnx import relative_error
from vision_rwkv_runtime.sam import (DECODER_INPUTS, DECODER_KIND, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_KIND,
                                     ENCODER_OUTPUTS, OnnxSamPredictor)

from .onnx import DEFAULT_OPSET, export_graph, state_fingerprint

__all__ = ['SamOnnxDecoder', 'SamOnnxEncoder', 'check_sam_onnx', 'default_prompts', 'export_sam_onnx']

#: Most points a decoder call takes (the graph's declared bound on ``num_points``).
MAX_POINTS = 1024


class SamOnnxEncoder(nn.Module):
    """Resized image (B, 3, h, w) in 0..255 -> ``image_embeddings`` and ``multiscale_features`` (see the module)."""

    def __init__(self, sam: RWKVSam):
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        size = self.sam.image_encoder.img_size
        x = (image - self.sam.pixel_mean) / self.sam.pixel_std
        x = F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))
        embedding, stride4, stride8 = self.sam.image_encoder.forward_maps(x)
        return embedding, self.sam.mask_decoder.image_fusion(stride4, stride8)


class SamOnnxDecoder(nn.Module):
    """One object's prompts -> ``masks``, ``iou_predictions``, ``low_res_masks`` (see the module docstring)."""

    def __init__(self, sam: RWKVSam):
        super().__init__()
        self.sam = sam
        self.img_size = sam.image_encoder.img_size

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """(1, N, 2) coordinates and (1, N) labels in {-1, 0, 1, 2, 3} -> (1, N, 256) sparse embeddings."""
        encoder = self.sam.prompt_encoder
        embedding = encoder.pe_layer.forward_with_coords(point_coords + 0.5, encoder.input_image_size)
        labels = point_labels[..., None]
        embedding = embedding * (labels != -1) + encoder.not_a_point_embed.weight * (labels == -1)
        for i, point_embedding in enumerate(encoder.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """(1, 1, S/4, S/4) logits and a (1,) flag -> (1, 256, S/16, S/16) dense embedding."""
        encoder = self.sam.prompt_encoder
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask * encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask

    def _postprocess(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """(1, M, S/4, S/4) logits -> (1, M, H, W): upscaled to S, padding cropped, resized to the original size."""
        masks = F.interpolate(masks, (self.img_size, self.img_size), mode='bilinear', align_corners=False)
        size = orig_im_size.to(torch.float32)
        input_size = torch.floor(size * (self.img_size / size.max()) + 0.5).to(torch.int64)
        h, w = input_size[0].item(), input_size[1].item()  # sizes read from data: torch.export needs their bounds
        torch._check(h <= self.img_size)
        torch._check(w <= self.img_size)
        masks = masks[..., :h, :w]
        H, W = orig_im_size.to(torch.int64)[0].item(), orig_im_size.to(torch.int64)[1].item()
        return F.interpolate(masks, (H, W), mode='bilinear', align_corners=False)

    def forward(self, image_embeddings: torch.Tensor, multiscale_features: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor, mask_input: torch.Tensor, has_mask_input: torch.Tensor,
                orig_im_size: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        low_res, iou = self.sam.mask_decoder.predict_masks_fused(
            image_embeddings, multiscale_features, self.sam.prompt_encoder.get_dense_pe(), sparse, dense)
        return self._postprocess(low_res, orig_im_size), iou, low_res


def _metadata(sam: RWKVSam, kind: str) -> Dict[str, str]:
    encoder = sam.image_encoder
    return {'vision_rwkv.kind': kind, 'vision_rwkv.img_size': str(encoder.img_size),
            'vision_rwkv.fingerprint': state_fingerprint(sam),
            'vision_rwkv.architecture': f'{len(encoder.blocks)} {type(encoder.blocks[0]).__name__} blocks of dim '
                                        f'{encoder.embed_dim}'}


def export_sam_onnx(sam: RWKVSam, encoder_path: Union[str, os.PathLike], decoder_path: Union[str, os.PathLike],
                    opset: int = DEFAULT_OPSET, optimize: bool = True) -> Tuple[Path, Path]:
    """Export ``sam``'s image encoder and prompt decoder to two ONNX files (see the module docstring).

    The encoder takes any batch and any resized h, w up to ``img_size`` (its sides are padded to ``img_size``
    inside the graph); the decoder any number of points. Both files are written atomically.

    Returns:
        The two paths.
    """
    sam = sam.eval()
    size = sam.image_encoder.img_size
    if size < 64:
        raise ExportError(f'img_size {size}: export RWKV-SAM models of img_size >= 64 (a 4x4 embedding)')
    if sam.mask_decoder.fusion == 'none':
        raise ExportError("the ONNX files carry the decoder's multiscale features: export a decoder with fusion 'mix' "
                          "or 'add', not 'none'")
    image = torch.rand(2, 3, size - 16, size - 32) * 255  # below size on both sides: no pad of 0 is traced
    encoder_shapes = ({0: torch.export.Dim('batch', min=1, max=1 << 16),
                       2: torch.export.Dim('height', min=1, max=size), 3: torch.export.Dim('width', min=1, max=size)},)
    encoder = SamOnnxEncoder(sam)
    encoder_path = export_graph(encoder, (image,), encoder_path, ENCODER_INPUTS, ENCODER_OUTPUTS,
                                encoder_shapes, opset, optimize, _metadata(sam, ENCODER_KIND))
    grid = size // 16
    with torch.no_grad():
        embedding, fusion = encoder(image[:1])  # the decoder's example inputs
    prompt = (embedding, fusion, torch.rand(1, 3, 2) * size, torch.tensor([[1., 0., -1.]]),
              torch.zeros(1, 1, 4 * grid, 4 * grid), torch.zeros(1), torch.tensor([3. * size, 2. * size]))
    points = torch.export.Dim('num_points', min=1, max=MAX_POINTS)
    decoder_shapes = (None, None, {1: points}, {1: points}, None, None, None)
    decoder_path = export_graph(SamOnnxDecoder(sam), prompt, decoder_path, DECODER_INPUTS, DECODER_OUTPUTS,
                                decoder_shapes, opset, optimize, _metadata(sam, DECODER_KIND),
                                output_dims={'masks': {2: 'orig_height', 3: 'orig_width'}})
    return encoder_path, decoder_path


def default_prompts(height: int, width: int) -> Dict[str, Dict[str, np.ndarray]]:
    """A point, a box and a multi-point prompt (two foreground points, one background) for an (H, W) image."""
    cx, cy = width / 2, height / 2
    return {
        'point': dict(point_coords=np.array([[cx, cy]]), point_labels=np.array([1])),
        'box': dict(box=np.array([width / 4, height / 4, 3 * width / 4, 3 * height / 4])),
        'points': dict(point_coords=np.array([[cx, cy], [cx + width / 8, cy], [width / 10, height / 10]]),
                       point_labels=np.array([1, 1, 0])),
    }


def check_sam_onnx(sam: RWKVSam, encoder_path: Union[str, os.PathLike], decoder_path: Union[str, os.PathLike],
                   image: np.ndarray, prompts: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> List[Dict]:
    """Compare ``OnnxSamPredictor`` on the two files with ``RWKVSamPredictor`` on ``sam`` (float32), on ``image``.

    Args:
        image: (H, W, 3) uint8 RGB.
        prompts: {name: ``predict`` keyword arguments}; default ``default_prompts``.

    Returns:
        One row per prompt and mask output (single and multimask): 'prompt', 'multimask', 'logits_rel_err'
        (relative error of the mask logits at the original size), 'iou_rel_err', 'mask_pixels' and
        'mask_mismatch' (pixels whose mask differs), 'mismatch_max_logit' (largest |PyTorch logit| among them:
        pixels on the 0 threshold may round either way).
    """
    reference, onnx = RWKVSamPredictor(sam.eval()), OnnxSamPredictor(encoder_path, decoder_path)
    reference.set_image(image)
    onnx.set_image(image)
    rows = []
    for name, prompt in (prompts or default_prompts(*image.shape[:2])).items():
        for multimask in (False, True):
            ref_logits, ref_iou, _ = reference.predict(**prompt, multimask_output=multimask, return_logits=True)
            logits, iou, _ = onnx.predict(**prompt, multimask_output=multimask, return_logits=True)
            mismatch = (ref_logits > 0) != (logits > 0)
            rows.append(dict(prompt=name, multimask=multimask, logits_rel_err=relative_error(logits, ref_logits),
                             iou_rel_err=relative_error(iou, ref_iou), mask_pixels=int(mismatch.size),
                             mask_mismatch=int(mismatch.sum()),
                             mismatch_max_logit=float(np.abs(ref_logits[mismatch]).max(initial=0.0))))
    return rows
