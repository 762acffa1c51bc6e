"""RWKV-SAM on mmengine: prompted training (boxes, points, correction clicks, mask prompts) and evaluation.

Import in configs with ``custom_imports=['vision_rwkv.engine', 'vision_rwkv.engine.sam']``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.registry import METRICS, MODELS

from ..errors import CheckpointError, ConfigError
from ..checkpoint import load_checkpoint_file
from ..sam import build_rwkv_sam
from ..sam.losses import dice_loss, mask_iou, sigmoid_focal_loss
from ..sam.metrics import boundary_iou
from ..sam.prompts import box_from_mask, centre_point, correction_click, jitter_box, sample_points
from . import sam_data  # noqa: F401  (registers CocoInstanceMasks)

__all__ = ['PromptedMaskIoU', 'RWKVSamTrainer', 'build_sam_teacher']


@MODELS.register_module()
class RWKVSamTrainer(BaseModel):
    """Trains an ``RWKVSam`` from instance masks and evaluates it with box and centre-point prompts.

    Per image, up to ``max_instances`` instances are prompted; the prompts of the whole batch go through
    the decoder together, all with a jittered box (probability ``1 - point_prob``) or all with
    1..``max_points`` points (positives and maybe negatives); then, in a batch drawn with probability
    ``correction_prob``, ``correction_rounds`` rounds add a click on the largest error and feed back
    the previous low-resolution logits as mask prompt. Single-point prompts use the three multimask outputs and
    train the best one (SAM's ambiguity rule). Loss per mask: focal × ``focal_weight`` + dice ×
    ``dice_weight`` + MSE(predicted IoU, actual IoU) × ``iou_weight``.

    Distillation (optional): with ``teacher=dict(model_type='vit_b'|'vit_l'|'vit_h', checkpoint=PATH)`` a
    frozen segment-anything model is built with segment-anything's ``sam_model_registry`` and its weights
    loaded with ``weights_only=True``; ``distill_weight`` × MSE between our image embedding and the
    teacher's (the padded images resized to the teacher's 1024 input, its 64×64 embedding resized
    to ours) is added as ``loss_distill``. The teacher is kept outside the module tree: it is not
    trained, not saved in checkpoints and not wrapped by DDP.

    Args:
        variant, img_size, checkpoint, wkv_mode, fusion: as ``build_rwkv_sam``.
        encoder: overrides of the encoder arguments (e.g. ``depth``).
        teacher: ``dict(model_type, checkpoint)`` of a SAM teacher, or None.
        seed: seed of the prompt generator (``generator``); under a runner each training step re-seeds it from
            (seed, rank, iteration), so that ranks draw different prompts and a resumed run the same ones.
    """

    def __init__(self, variant: str = 'tiny', img_size: int = 1024, checkpoint: Optional[str] = None,
                 wkv_mode: str = 'raster', fusion: str = 'mix', encoder: Optional[dict] = None,
                 max_instances: int = 8,
                 point_prob: float = 0.5, max_points: int = 3, correction_rounds: int = 1,
                 correction_prob: float = 1.0,
                 focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0,
                 box_noise: float = 0.1, teacher: Optional[dict] = None, distill_weight: float = 1.0,
                 seed: int = 0):
        super().__init__()
        self.sam = build_rwkv_sam(variant, checkpoint, img_size, wkv_mode, fusion, **(encoder or {})).train()
        self.max_instances, self.point_prob, self.max_points = max_instances, point_prob, max_points
        self.correction_rounds, self.correction_prob, self.box_noise = correction_rounds, correction_prob, box_noise
        self.weights = dict(focal=focal_weight, dice=dice_weight, iou=iou_weight, distill=distill_weight)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + get_rank())
        # a plain attribute, not a submodule: never trained, saved or wrapped by DDP
        self.__dict__['teacher'] = build_sam_teacher(**teacher) if teacher is not None else None

    # ---- shared -------------------------------------------------------------------------------------
    def _images(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """(3, h, w) uint8 images -> the normalised, padded (B, 3, S, S) encoder input."""
        return torch.stack([self.sam.preprocess(x.float()) for x in inputs])

    def _decode(self, features, image_index: torch.Tensor, points=None, boxes=None, mask_input=None,
                multimask: bool = False):
        """P prompts on the batch's features -> (P, C, S, S) logits at the input side, (P, C) IoU and
        the (P, C, S/4, S/4) low-resolution logits; prompt p belongs to image ``image_index[p]``."""
        low_res, iou = self.sam.decode_prompts(features, points, boxes, mask_input, multimask, image_index)
        low_res = low_res.float()  # losses in float32 under autocast
        size = self.sam.image_encoder.img_size
        return F.interpolate(low_res, (size, size), mode='bilinear', align_corners=False), iou, low_res

    def _instances(self, data_samples: list, limit: Optional[int] = None):
        """Every image's masks padded to (S, S) like the images, at most ``limit`` random ones per image,
        concatenated to (P, S, S) bool with the (P,) index of their image."""
        size = self.sam.image_encoder.img_size
        masks, index = [], []
        for i, sample in enumerate(data_samples):
            m = sample.masks
            if limit is not None and len(m) > limit:
                m = m[torch.randperm(len(m), generator=self.generator)[:limit].to(m.device)]
            masks.append(F.pad(m.to(torch.uint8), (0, size - m.shape[-1], 0, size - m.shape[-2])).bool())
            index.append(torch.full((len(m),), i, dtype=torch.long, device=m.device))
        return torch.cat(masks), torch.cat(index)

    # ---- training ------------------------------------------------------------------------------------
    def _prompts(self, masks: torch.Tensor):
        """Initial prompts for (P, S, S) masks, one kind per batch: (points, labels) (P, n, 2) / (P, n)
        or boxes (P, 4)."""
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
        """Losses of (P, C, S, S) logits against (P, S, S) targets, and the (P,) index of the best mask.

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

    def _losses(self, features, masks: torch.Tensor, index: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Mean losses of the initial prompts and of the correction rounds (if drawn) on (P, S, S) masks."""
        points, boxes = self._prompts(masks)
        single_point = points is not None and points[0].shape[1] == 1
        logits, iou, low_res = self._decode(features, index, points, boxes, multimask=single_point)
        losses, best = self._mask_losses(logits, iou, masks)
        rows = torch.arange(len(masks), device=masks.device)
        drawn = self.correction_prob >= 1 or bool(torch.rand((), generator=self.generator) < self.correction_prob)
        rounds = self.correction_rounds if drawn else 0
        for _ in range(rounds):
            clicks = [correction_click(p.detach().cpu() > 0, m.cpu()) for p, m in zip(logits[rows, best], masks)]
            coords = torch.stack([c for c, _ in clicks]).to(masks.device)
            labels = torch.stack([lab for _, lab in clicks]).to(masks.device)
            if points is not None:
                coords, labels = torch.cat([points[0], coords], 1), torch.cat([points[1], labels], 1)
            points = (coords, labels)
            previous = low_res[rows, best][:, None].detach()
            logits, iou, low_res = self._decode(features, index, points, boxes, previous)
            round_losses, best = self._mask_losses(logits, iou, masks)
            losses = {k: losses[k] + round_losses[k] for k in losses}
        return {k: v / (1 + rounds) for k, v in losses.items()}

    def _distill_loss(self, images: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """MSE between our (B, C, h, w) embedding and the teacher's on the same (B, 3, S, S) images."""
        teacher = self.teacher.to(images.device)
        size = teacher.image_encoder.img_size
        with torch.no_grad():
            if images.shape[-2:] != (size, size):
                images = F.interpolate(images, (size, size), mode='bilinear', align_corners=False)
            target = teacher.image_encoder(images)
            if target.shape[-2:] != embedding.shape[-2:]:
                target = F.interpolate(target, embedding.shape[-2:], mode='bilinear', align_corners=False)
        return F.mse_loss(embedding.float(), target.float())

    # ---- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, features, masks: torch.Tensor, index: torch.Tensor, sizes: List[tuple]) -> List[dict]:
        """Per image: IoU and boundary IoU of every instance with its tight box and with its centre point."""
        boxes = torch.stack([box_from_mask(m) for m in masks])
        box_logits, _, _ = self._decode(features, index, boxes=boxes)
        centres = torch.stack([centre_point(m.cpu()) for m in masks]).to(masks.device)
        labels = torch.ones(len(masks), 1, dtype=torch.long, device=masks.device)
        point_logits, iou, _ = self._decode(features, index, (centres, labels), multimask=True)
        point_logits = point_logits[torch.arange(len(masks)), iou.argmax(1)]
        results = []
        for i, (h, w) in enumerate(sizes):
            rows = index == i
            result = {}
            for name, logits in (('box', box_logits[rows, 0]), ('point', point_logits[rows])):
                pred = (logits > self.sam.mask_threshold)[:, :h, :w]
                target = masks[rows][:, :h, :w]
                result[f'{name}_iou'] = mask_iou(pred, target).cpu().numpy()
                result[f'{name}_biou'] = np.array([boundary_iou(p, t) for p, t in zip(pred.cpu().numpy(),
                                                                                       target.cpu().numpy())])
            results.append(result)
        return results

    # ---- mmengine interface ---------------------------------------------------------------------------
    def _seed_prompts(self) -> None:
        """Under a runner, re-seed ``generator`` from (seed, rank, iteration) before each training step.

        The prompts of a step are then a function of the step: a run resumed from a checkpoint (which holds the
        iteration) draws the same prompts as an uninterrupted one, and every rank draws its own. Outside a
        runner (no iteration in mmengine's message hub) the generator runs on as seeded.
        """
        iteration = MessageHub.get_current_instance().get_info('iter')
        if iteration is not None:
            key = np.random.SeedSequence((self.seed, get_rank(), iteration)).generate_state(2, np.uint32)
            self.generator.manual_seed(int(key[0]) << 32 | int(key[1]))

    def forward(self, inputs: List[torch.Tensor], data_samples: Optional[list] = None, mode: str = 'tensor'):
        """``inputs``: (3, h, w) uint8 images resized to the longest side ``img_size``; ``data_samples``:
        data elements with ``masks`` (N, h, w) bool. Modes: 'loss' (dict of losses), 'predict' (per-image IoUs),
        'tensor' (the image features). The prompts of all images are decoded together."""
        images = self._images(inputs)
        features = self.sam.image_encoder(images)
        if mode == 'tensor':
            return features
        features = self.sam.mask_decoder.fuse_image(features)  # once for every decoder pass of the step
        if mode == 'loss':
            self._seed_prompts()
            losses = self._losses(features, *self._instances(data_samples, self.max_instances))
            if self.teacher is not None:
                losses['loss_distill'] = self.weights['distill'] * self._distill_loss(images, features.embedding)
            return losses
        if mode == 'predict':
            return self._evaluate(features, *self._instances(data_samples), [x.shape[-2:] for x in inputs])
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")


def build_sam_teacher(model_type: str, checkpoint: str) -> torch.nn.Module:
    """A frozen segment-anything model in eval mode: built by ``segment_anything.sam_model_registry``,
    weights from ``checkpoint`` loaded with ``weights_only=True``."""
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:
        raise ImportError('distillation needs segment-anything: pip install "vision_rwkv[sam]"') from e
    if model_type not in sam_model_registry:
        raise ConfigError(f'unknown SAM teacher {model_type!r}; choose from {sorted(sam_model_registry)}')
    teacher = sam_model_registry[model_type](checkpoint=None)
    state = load_checkpoint_file(checkpoint)
    result = teacher.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f'{checkpoint} is not a segment-anything {model_type} checkpoint: '
                         f'{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), '
                         f'{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})')
    return teacher.eval().requires_grad_(False)


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
