"""Data: the embedded synthetic data sets and an ImageFolder data set (plain PyTorch, no mmengine)."""
from .coco import COCO_CATEGORIES, COCO_CLASSES, coco_instance_sample, make_coco_instance_set
from .generate import make_classification_set
from .image_folder import ImageFolderDataset
from .sa1b import make_sa1b_set
from .segmentation import SEG_TOY_CLASSES, make_segmentation_set, segmentation_sample
from .shapes import SHAPE_CLASSES, render_scene

__all__ = ['COCO_CATEGORIES', 'COCO_CLASSES', 'SEG_TOY_CLASSES', 'SHAPE_CLASSES', 'ImageFolderDataset',
           'coco_instance_sample', 'make_classification_set', 'make_coco_instance_set', 'make_sa1b_set',
           'make_segmentation_set', 'render_scene', 'segmentation_sample']
