"""Data: the embedded synthetic data sets and an ImageFolder data set (plain PyTorch, no mmengine)."""
from .generate import make_classification_set
from .image_folder import ImageFolderDataset
from .shapes import SHAPE_CLASSES, render_scene

__all__ = ['SHAPE_CLASSES', 'ImageFolderDataset', 'make_classification_set', 'render_scene']
