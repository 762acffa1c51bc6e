"""mmengine integration of vision_rwkv: import it (configs: ``custom_imports``) to register

* models: ``TimmClassifier`` (any timm model by name),
* data sets: ``ImageFolder`` (timm transforms, optional embedded shapes set),
* metrics: ``Accuracy`` (top-k), optimizer constructor ``LayerDecayOptimWrapperConstructor``,
* hooks: ``ClassNumCheckHook``, ``TrainingCurvesHook``, ``PortableCheckpointHook``,
* the ``'local_atomic'`` file backend, and ``weights_only=True`` loading of local checkpoints.
"""
import vision_rwkv  # noqa: F401  (registers the VRWKV models in timm)

from .checkpoint import AtomicLocalBackend, PortableCheckpointHook, atomic_write
from .classifier import TimmClassifier, create_timm_model
from .datasets import ImageFolder
from ..errors import ConfigError
from .hooks import ClassNumCheckHook, TrainingCurvesHook
from .metrics import Accuracy
from .optim import LayerDecayOptimWrapperConstructor

__all__ = ['Accuracy', 'AtomicLocalBackend', 'ClassNumCheckHook', 'ConfigError', 'ImageFolder',
           'LayerDecayOptimWrapperConstructor', 'PortableCheckpointHook', 'TimmClassifier',
           'TrainingCurvesHook', 'atomic_write', 'create_timm_model']
