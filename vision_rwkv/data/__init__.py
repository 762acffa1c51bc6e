"""Data: the embedded synthetic data sets and an ImageFolder data set (plain PyTorch, no mmengine)."""
from .generate import make_classification_set
from .image_folder import ImageFolderDataset
from .segmentation import SEG_TOY_CLASSES, make_segmentation_set, segmentation_sample
from .shapes import SHAPE_CLASSES, render_scene

__all__ = ['SEG_TOY_CLASSES', 'SHAPE_CLASSES', 'ImageFolderDataset', 'make_classification_set',
           'make_segmentation_set', 'render_scene', 'segmentation_sample']
