"""RWKV-SAM training pieces: losses, prompt sampling, boundary IoU (against float64 / hand references)."""
import numpy as np
import pytest
import torch

from vision_rwkv.sam.losses import dice_loss, mask_iou, sigmoid_focal_loss
from vision_rwkv.sam.metrics import boundary_iou, mask_boundary
from vision_rwkv.sam.prompts import box_from_mask, centre_point, correction_click, jitter_box, sample_points


def square(size=16, lo=4, hi=10):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[lo:hi, lo:hi] = True
    return mask


def test_focal_and_dice_match_float64_formulas():
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    target = (torch.rand(3, 5, 7) > 0.5).double()
    p = torch.sigmoid(logits)
    ce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    expected_focal = (alpha_t * ce * (1 - p_t) ** 2).mean((1, 2))
    assert torch.allclose(sigmoid_focal_loss(logits, target), expected_focal)
    expected_dice = 1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    assert torch.allclose(dice_loss(logits, target), expected_dice)
    perfect = torch.where(target > 0, 50.0, -50.0)
    assert dice_loss(perfect, target).max() < 1e-6 and sigmoid_focal_loss(perfect, target).max() < 1e-12


def test_mask_iou_cases():
    a = square()
    b = torch.zeros_like(a)
    b[4:10, 7:13] = True  # half overlap: 18 / 54
    empty = torch.zeros_like(a)
    ious = mask_iou(torch.stack([a, a, empty]), torch.stack([a, b, empty]))
    assert torch.allclose(ious, torch.tensor([1.0, 18 / 54, 1.0]))


def test_box_jitter_and_points():
    mask = square()
    box = box_from_mask(mask)
    assert box.tolist() == [4, 4, 10, 10]
    g = torch.Generator().manual_seed(0)
    jittered = torch.stack([jitter_box(box, (16, 16), g, 0.1) for _ in range(50)])
    assert (jittered - box).abs().max() <= 0.6 + 1e-6 and (jittered - box).abs().max() > 0
    coords, labels = sample_points(mask, 3, 2, g)
    assert coords.shape == (5, 2) and labels.tolist() == [1, 1, 1, 0, 0]
    inside = mask[coords[:, 1].long(), coords[:, 0].long()]
    assert inside.tolist() == [True, True, True, False, False]


def test_centre_point_and_correction_click():
    mask = square(lo=2, hi=13)  # 11×11 square at 2..12: centre pixel 7
    assert centre_point(mask).tolist() == [[7.5, 7.5]]
    pred = square(lo=2, hi=8)  # misses most of the object: positive click inside the miss
    coords, label = correction_click(pred, mask)
    assert label.tolist() == [1] and mask[int(coords[0, 1]), int(coords[0, 0])] and not pred[int(coords[0, 1]),
                                                                                             int(coords[0, 0])]
    big = square(lo=0, hi=16)
    coords, label = correction_click(big, mask)  # spurious pixels dominate: negative click outside
    assert label.tolist() == [0] and not mask[int(coords[0, 1]), int(coords[0, 0])]
    coords, label = correction_click(mask, mask)  # no error: positive click at the centre
    assert label.tolist() == [1] and coords.tolist() == [[7.5, 7.5]]


def test_boundary_iou():
    a = np.zeros((40, 40), bool)
    a[10:30, 10:30] = True
    assert boundary_iou(a, a) == 1.0
    assert mask_boundary(a, 1).sum() == 20 * 4 - 4
    shifted = np.roll(a, 1, axis=1)
    assert 0.0 < boundary_iou(shifted, a) < 1.0
    # boundary IoU punishes a wrong contour more than mask IoU does
    mask_iou_value = (shifted & a).sum() / (shifted | a).sum()
    assert boundary_iou(shifted, a) < mask_iou_value
    assert boundary_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError, match='different shapes'):
        boundary_iou(a, a[:10])
