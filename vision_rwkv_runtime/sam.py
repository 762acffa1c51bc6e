"""RWKV-SAM in onnxruntime: segment-anything's predictor API over the two files ``vision_rwkv.deploy`` exports.

    predictor = OnnxSamPredictor('encoder.onnx', 'decoder.onnx')
    predictor.set_image(image)                                   # runs the encoder once
    masks, scores, logits = predictor.predict(point_coords=[[x, y]], point_labels=[1], multimask_output=True)

The files' inputs and outputs are described in ``vision_rwkv.deploy.sam_onnx``. ``predict`` takes and returns what
``RWKVSamPredictor.predict`` does, with the same checks, and gives the same masks up to float32 rounding. One
difference, segment-anything's ONNX convention: a prompt of a mask alone gets one padding point (the PyTorch
predictor passes no point token).
"""
import os
from typing import Dict, Optional, Tuple, Union

import numpy as np

from .errors import ExportError
from .image import ResizeLongestSide, check_prompts, to_rgb_uint8
from .onnx import custom_metadata, onnx_session

__all__ = ['DECODER_INPUTS', 'DECODER_KIND', 'DECODER_OUTPUTS', 'ENCODER_INPUTS', 'ENCODER_KIND', 'ENCODER_OUTPUTS',
           'OnnxSamPredictor', 'sam_file_metadata']

ENCODER_KIND = 'rwkv_sam_encoder'
DECODER_KIND = 'rwkv_sam_decoder'
ENCODER_INPUTS = ('image',)
ENCODER_OUTPUTS = ('image_embeddings', 'multiscale_features')
DECODER_INPUTS = ('image_embeddings', 'multiscale_features', 'point_coords', 'point_labels', 'mask_input',
                  'has_mask_input', 'orig_im_size')
DECODER_OUTPUTS = ('masks', 'iou_predictions', 'low_res_masks')
#: point labels of segment-anything's ONNX decoder beyond foreground (1) and background (0)
PADDING_LABEL, BOX_LABELS = -1, (2, 3)


def sam_file_metadata(session, path: Union[str, os.PathLike], kind: str) -> Dict[str, str]:
    """The ``vision_rwkv.*`` metadata of an exported RWKV-SAM file, checked to be of ``kind``."""
    metadata = custom_metadata(session)
    found = metadata.get('vision_rwkv.kind')
    if found != kind:
        what = f'a {found} file' if found else 'not a file exported by vision_rwkv.deploy.export_sam_onnx'
        raise ExportError(f'{path}: expected the RWKV-SAM {kind.rsplit("_", 1)[-1]} ({kind}), got {what}')
    return metadata


class OnnxSamPredictor:
    """Compute the image features once with the encoder file, then answer many prompts with the decoder file.

    Args:
        encoder_path, decoder_path: the two files of one model (``export_sam_onnx``); files of different models
            (weights or input size) raise ``ExportError``.
        threads: onnxruntime intra-op threads (default: all cores).
    """

    def __init__(self, encoder_path: Union[str, os.PathLike], decoder_path: Union[str, os.PathLike],
                 threads: Optional[int] = None):
        self.encoder = onnx_session(encoder_path, threads)
        self.decoder = onnx_session(decoder_path, threads)
        encoder_meta = sam_file_metadata(self.encoder, encoder_path, ENCODER_KIND)
        decoder_meta = sam_file_metadata(self.decoder, decoder_path, DECODER_KIND)
        for key in ('vision_rwkv.img_size', 'vision_rwkv.fingerprint'):
            if encoder_meta.get(key) != decoder_meta.get(key):
                raise ExportError(f'{encoder_path} and {decoder_path} come from different models '
                                  f'({key.split(".")[1]} {encoder_meta.get(key)} and {decoder_meta.get(key)}): '
                                  'export both from one model')
        self.img_size = int(encoder_meta['vision_rwkv.img_size'])
        self.mask_input_size = (self.img_size // 4, self.img_size // 4)
        self.transform = ResizeLongestSide(self.img_size)
        self.reset_image()

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self.original_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None

    def set_image(self, image: np.ndarray, image_format: str = 'RGB') -> None:
        """Run the encoder on an (H, W[, C]) image (``to_rgb_uint8`` says which arrays are accepted)."""
        image = to_rgb_uint8(image, image_format)
        resized = self.transform.apply_image(image)
        self.reset_image()
        self.original_size = image.shape[:2]
        self.input_size = resized.shape[:2]
        batch = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)
        embeddings, multiscale = self.encoder.run(list(ENCODER_OUTPUTS), {ENCODER_INPUTS[0]: batch})
        self.features = (embeddings, multiscale)
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The (1, 256, S/16, S/16) image embedding of the current image."""
        self._require_image()
        return self.features[0]

    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                multimask_output: bool = True, return_logits: bool = False
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts in original-image pixel coordinates (``RWKVSamPredictor.predict``'s arguments).

        Returns:
            masks (C, H, W) bool (logits with ``return_logits``), scores (C,), low-resolution logits
            (C, S/4, S/4); C = 3 with ``multimask_output``, else 1.
        """
        self._require_image()
        points, labels, box = check_prompts(point_coords, point_labels, box, mask_input, self.original_size,
                                            self.mask_input_size)
        coords, codes = self._prompt_points(points, labels, box)
        has_mask = mask_input is not None
        inputs = dict(zip(DECODER_INPUTS, (
            *self.features, coords[None].astype(np.float32), codes[None].astype(np.float32),
            np.asarray(mask_input, np.float32)[None] if has_mask else np.zeros((1, 1, *self.mask_input_size),
                                                                               np.float32),
            np.array([float(has_mask)], np.float32), np.array(self.original_size, np.float32))))
        masks, scores, low_res = self.decoder.run(list(DECODER_OUTPUTS), inputs)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        masks = masks[0, selected]
        return (masks if return_logits else masks > 0.0), scores[0, selected], low_res[0, selected]

    def _prompt_points(self, points: Optional[np.ndarray], labels: Optional[np.ndarray],
                       box: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """Points and box corners in the resized frame, (K, 2), with their labels (K,): the points, then the box
        corners (labels 2, 3), or a padding point (label -1) when there is no box (segment-anything's convention)."""
        coords = [np.zeros((0, 2))]
        codes = [np.zeros(0)]
        if points is not None:
            coords.append(self.transform.apply_coords(points, self.original_size))
            codes.append(labels.astype(float))
        if box is not None:
            coords.append(self.transform.apply_boxes(box, self.original_size).reshape(2, 2))
            codes.append(np.array(BOX_LABELS, float))
        else:
            coords.append(np.zeros((1, 2)))
            codes.append(np.array([PADDING_LABEL], float))
        return np.concatenate(coords), np.concatenate(codes)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError('no image: call set_image(...) before predicting')
