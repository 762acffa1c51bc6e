"""Prompts sampled from ground-truth masks for training and evaluation (pixel coordinates x, y)."""
from typing import Tuple

import numpy as np
import torch
from scipy import ndimage

__all__ = ['box_from_mask', 'centre_point', 'correction_click', 'jitter_box', 'sample_points']


def box_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Tight (4,) x0, y0, x1, y1 box (pixel edges) of a non-empty (H, W) bool mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def jitter_box(box: torch.Tensor, size: Tuple[int, int], generator: torch.Generator, scale: float = 0.1
               ) -> torch.Tensor:
    """Move each side by up to ``scale`` × the box side (SAM's box noise), clipped to the (H, W) image."""
    w, h = box[2] - box[0], box[3] - box[1]
    noise = (torch.rand(4, generator=generator) * 2 - 1) * scale * torch.stack([w, h, w, h])
    box = box + noise
    return torch.stack([box[0].clamp(0, size[1]), box[1].clamp(0, size[0]),
                        box[2].clamp(0, size[1]), box[3].clamp(0, size[0])])


def sample_points(mask: torch.Tensor, n_pos: int, n_neg: int, generator: torch.Generator
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n_pos`` points inside and ``n_neg`` outside an (H, W) mask (pixel centres).

    Returns:
        coords (n, 2) x, y and labels (n,) 1 / 0; fewer negatives when the mask covers everything.
    """
    coords, labels = [], []
    for region, count, label in ((mask, n_pos, 1), (~mask, n_neg, 0)):
        ys, xs = torch.nonzero(region, as_tuple=True)
        if count and len(xs):
            pick = torch.randint(len(xs), (count,), generator=generator)
            coords.append(torch.stack([xs[pick], ys[pick]], 1).float() + 0.5)
            labels.append(torch.full((count,), label))
    return torch.cat(coords), torch.cat(labels)


def correction_click(pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The next click of an interactive user: the pixel deepest inside the largest error.

    Missed object pixels give a positive click, spurious ones a negative click.

    Returns:
        coords (1, 2) x, y and label (1,); a positive click on the object centre if there is no error.
    """
    missed, spurious = target & ~pred, pred & ~target
    region, label = (missed, 1) if missed.sum() >= spurious.sum() else (spurious, 0)
    if not region.any():
        region, label = target, 1
    return centre_point(region), torch.tensor([label])


def centre_point(mask: torch.Tensor) -> torch.Tensor:
    """(1, 2) x, y of the pixel farthest from the boundary of a non-empty (H, W) mask."""
    distance = ndimage.distance_transform_edt(np.pad(mask.cpu().numpy(), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return torch.tensor([[x + 0.5, y + 0.5]], dtype=torch.float32)
