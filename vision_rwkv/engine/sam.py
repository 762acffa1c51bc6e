"""RWKV-SAM on mmengine: prompted training (boxes, points, correction clicks, mask prompts) and evaluation.

Import in configs with ``custom_imports=['vision_rwkv.engine', 'vision_rwkv.engine.sam']``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import METRICS, MODELS

from ..sam import build_rwkv_sam
from ..sam.losses import dice_loss, mask_iou, sigmoid_focal_loss
from ..sam.metrics import boundary_iou
from ..sam.modeling.sam import select_image
from ..sam.prompts import box_from_mask, centre_point, correction_click, jitter_box, sample_points
from . import sam_data  # noqa: F401  (registers CocoInstanceMasks)

__all__ = ['PromptedMaskIoU', 'RWKVSamTrainer']


@MODELS.register_module()
class RWKVSamTrainer(BaseModel):
    """Trains an ``RWKVSam`` from instance masks and evaluates it with box and centre-point prompts.

    Per image, up to ``max_instances`` instances are prompted, each with a jittered box
    (probability ``1 - point_prob``) or 1..``max_points`` points (positives and maybe negatives);
    then ``correction_rounds`` rounds add a click on the largest error and feed back the previous
    low-resolution logits as mask prompt. Single-point prompts use the three multimask outputs and
    train the best one (SAM's ambiguity rule). Loss per mask: focal × ``focal_weight`` + dice ×
    ``dice_weight`` + MSE(predicted IoU, actual IoU) × ``iou_weight``.

    Args:
        variant, img_size, checkpoint, wkv_mode: as ``build_rwkv_sam``.
        encoder: overrides of the encoder arguments (e.g. ``depth``).
    """

    def __init__(self, variant: str = 'tiny', img_size: int = 1024, checkpoint: Optional[str] = None,
                 wkv_mode: str = 'raster', encoder: Optional[dict] = None, max_instances: int = 8,
                 point_prob: float = 0.5, max_points: int = 3, correction_rounds: int = 1,
                 focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0,
                 box_noise: float = 0.1, seed: int = 0):
        super().__init__()
        self.sam = build_rwkv_sam(variant, checkpoint, img_size, wkv_mode, **(encoder or {})).train()
        self.max_instances, self.point_prob, self.max_points = max_instances, point_prob, max_points
        self.correction_rounds, self.box_noise = correction_rounds, box_noise
        self.weights = dict(focal=focal_weight, dice=dice_weight, iou=iou_weight)
        self.generator = torch.Generator().manual_seed(seed)

    # ---- shared -------------------------------------------------------------------------------------
    def _encode(self, inputs: List[torch.Tensor]):
        images = torch.stack([self.sam.preprocess(x.float()) for x in inputs])
        return self.sam.image_encoder(images)

    def _decode(self, features, points=None, boxes=None, mask_input=None, multimask: bool = False):
        """Prompts of one image -> (B, C, S, S) logits at the input side, (B, C) IoU, low-res logits."""
        low_res, iou = self.sam.decode_prompts(features, points, boxes, mask_input, multimask)
        size = self.sam.image_encoder.img_size
        return F.interpolate(low_res, (size, size), mode='bilinear', align_corners=False), iou, low_res

    @staticmethod
    def _pad(masks: torch.Tensor, size: int) -> torch.Tensor:
        """(N, h, w) bool masks -> (N, S, S), padded bottom and right like the images."""
        return F.pad(masks.to(torch.uint8), (0, size - masks.shape[-1], 0, size - masks.shape[-2])).bool()

    # ---- training ------------------------------------------------------------------------------------
    def _prompts(self, masks: torch.Tensor):
        """Initial prompts for (N, S, S) masks: (points, labels) (N, n, 2) / (N, n) or boxes (N, 4)."""
        if torch.rand((), generator=self.generator) >= self.point_prob:
            boxes = torch.stack([jitter_box(box_from_mask(m), m.shape, self.generator, self.box_noise) for m in masks])
            return None, boxes.to(masks.device)
        n_pos = int(torch.randint(1, self.max_points + 1, (), generator=self.generator))
        n_neg = int(torch.randint(0, self.max_points - n_pos + 1, (), generator=self.generator))
        sampled = [sample_points(m.cpu(), n_pos, n_neg, self.generator) for m in masks]
        n = min(len(c) for c, _ in sampled)
        coords = torch.stack([c[:n] for c, _ in sampled]).to(masks.device)
        labels = torch.stack([lab[:n] for _, lab in sampled]).to(masks.device)
        return (coords, labels), None

    def _mask_losses(self, logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor):
        """Losses of (B, C, S, S) logits against (B, S, S) targets, and the (B,) index of the best mask.

        Only the best of the C masks gets the mask losses; every mask trains its IoU prediction.
        """
        B, C = logits.shape[:2]
        t = target[:, None].expand(-1, C, -1, -1).float().flatten(0, 1)
        flat = logits.flatten(0, 1)
        focal = sigmoid_focal_loss(flat, t).view(B, C)
        dice = dice_loss(flat, t).view(B, C)
        combined = self.weights['focal'] * focal + self.weights['dice'] * dice
        best = combined.argmin(1)
        rows = torch.arange(B, device=logits.device)
        with torch.no_grad():
            actual = mask_iou(flat > 0, t.bool()).view(B, C)
        iou = F.mse_loss(iou_pred, actual, reduction='none')
        return dict(loss_focal=focal[rows, best].mean() * self.weights['focal'],
                    loss_dice=dice[rows, best].mean() * self.weights['dice'],
                    loss_iou=iou.mean() * self.weights['iou']), best

    def _image_losses(self, features, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        if len(masks) > self.max_instances:
            masks = masks[torch.randperm(len(masks), generator=self.generator)[:self.max_instances].to(masks.device)]
        points, boxes = self._prompts(masks)
        single_point = points is not None and points[0].shape[1] == 1
        logits, iou, low_res = self._decode(features, points, boxes, multimask=single_point)
        losses, best = self._mask_losses(logits, iou, masks)
        rows = torch.arange(len(masks), device=masks.device)
        for _ in range(self.correction_rounds):
            clicks = [correction_click(p.detach().cpu() > 0, m.cpu()) for p, m in zip(logits[rows, best], masks)]
            coords = torch.stack([c for c, _ in clicks]).to(masks.device)
            labels = torch.stack([lab for _, lab in clicks]).to(masks.device)
            if points is not None:
                coords, labels = torch.cat([points[0], coords], 1), torch.cat([points[1], labels], 1)
            points = (coords, labels)
            previous = low_res[rows, best][:, None].detach()
            logits, iou, low_res = self._decode(features, points, boxes, previous)
            round_losses, best = self._mask_losses(logits, iou, masks)
            losses = {k: losses[k] + round_losses[k] for k in losses}
        return {k: v / (1 + self.correction_rounds) for k, v in losses.items()}

    # ---- evaluation ----------------------------------------------------------------------------------
    def _evaluate_image(self, features, masks: torch.Tensor, size) -> dict:
        h, w = size
        boxes = torch.stack([box_from_mask(m) for m in masks])
        box_logits, _, _ = self._decode(features, boxes=boxes)
        centres = torch.stack([centre_point(m.cpu()) for m in masks]).to(masks.device)
        point_logits, iou, _ = self._decode(features, (centres, torch.ones(len(masks), 1, dtype=torch.long,
                                                                            device=masks.device)), multimask=True)
        point_logits = point_logits[torch.arange(len(masks)), iou.argmax(1)][:, None]
        result = {}
        for name, logits in (('box', box_logits[:, 0]), ('point', point_logits[:, 0])):
            pred = (logits > self.sam.mask_threshold)[:, :h, :w]
            target = masks[:, :h, :w]
            result[f'{name}_iou'] = mask_iou(pred, target).cpu().numpy()
            result[f'{name}_biou'] = np.array([boundary_iou(p, t) for p, t in zip(pred.cpu().numpy(),
                                                                                   target.cpu().numpy())])
        return result

    # ---- mmengine interface ---------------------------------------------------------------------------
    def forward(self, inputs: List[torch.Tensor], data_samples: Optional[list] = None, mode: str = 'tensor'):
        """``inputs``: (3, h, w) uint8 images resized to the longest side ``img_size``; ``data_samples``:
        data elements with ``masks`` (N, h, w) bool. Modes: 'loss' (dict of losses), 'predict' (per-image IoUs),
        'tensor' (the image features)."""
        features = self._encode(inputs)
        if mode == 'tensor':
            return features
        size = self.sam.image_encoder.img_size
        if mode == 'loss':
            per_image = [self._image_losses(select_image(features, i), self._pad(s.masks, size))
                         for i, s in enumerate(data_samples)]
            return {k: torch.stack([p[k] for p in per_image]).mean() for k in per_image[0]}
        if mode == 'predict':
            return [self._evaluate_image(select_image(features, i), self._pad(s.masks, size), x.shape[-2:])
                    for i, (x, s) in enumerate(zip(inputs, data_samples))]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")


@METRICS.register_module()
class PromptedMaskIoU(BaseMetric):
    """Mean IoU and boundary IoU over all instances, with a box prompt and with one centre point."""

    default_prefix = ''

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        self.results.extend(data_samples)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        return {'mIoU_box': float(merged['box_iou'].mean()), 'mIoU_point': float(merged['point_iou'].mean()),
                'bIoU_box': float(merged['box_biou'].mean()), 'bIoU_point': float(merged['point_biou'].mean())}
