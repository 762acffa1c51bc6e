"""Mask quality measures: IoU and boundary IoU (Cheng et al., 2021)."""
import numpy as np
from scipy import ndimage

__all__ = ['boundary_iou', 'mask_boundary']


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Pixels of an (H, W) bool mask within ``dilation`` pixels of its contour (inside the mask)."""
    eroded = ndimage.binary_erosion(np.pad(mask, 1), iterations=dilation)[1:-1, 1:-1]
    return mask & ~eroded


def boundary_iou(pred: np.ndarray, target: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of two (H, W) bool masks; the band width is ``dilation_ratio`` × the diagonal (≥ 1 px)."""
    if pred.shape != target.shape:
        raise ValueError(f'masks of different shapes: {pred.shape} and {target.shape}')
    dilation = max(1, int(round(dilation_ratio * np.hypot(*target.shape))))
    a, b = mask_boundary(pred, dilation), mask_boundary(target, dilation)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
