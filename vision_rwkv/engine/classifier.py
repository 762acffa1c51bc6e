"""mmengine model that trains any timm classifier by name (VRWKV and baselines share one recipe)."""
from __future__ import annotations

import difflib
from typing import Dict, Optional, Union

import timm
import torch
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import clean_state_dict

from vision_rwkv.models import VRWKV, checkpoint_filter_fn
from vision_rwkv.checkpoint import load_checkpoint_file, unwrap_state_dict

from ..errors import ConfigError
from .optim import timm_layer_ids


def create_timm_model(model_name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` with clear errors for an unknown name or an argument the model rejects."""
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise ConfigError(f'unknown timm model {model_name!r}.{hint} '
                          "(VRWKV models are registered by `import vision_rwkv`; list them with "
                          "timm.list_models('vrwkv*'))")
    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError as e:
        if 'unexpected keyword argument' not in str(e):
            raise
        raise ConfigError(f'timm model {model_name!r} does not accept one of {sorted(kwargs)}: {e}') from e


def _create_classifier(model_name: str, num_classes: int, pretrained: Union[bool, str], **kwargs) -> torch.nn.Module:
    """``create_timm_model`` with the weights of a checkpoint file (``pretrained`` a path) handed to timm's
    loader as a state dict, so that the file itself is only ever read with ``weights_only=True``."""
    if not isinstance(pretrained, str):
        return create_timm_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    overlay = dict(file=pretrained, state_dict=read_pretrained_file(pretrained))
    try:
        model = create_timm_model(model_name, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay=overlay, **kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # the model's checkpoint filter refused the weights
        raise ConfigError(f'pretrained checkpoint {pretrained}: {e}') from None
    model.pretrained_cfg.pop('state_dict', None)  # the config keeps the file name, not the loaded tensors
    return model


def read_pretrained_file(path: str) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint file as timm's ``pretrained_cfg_overlay=dict(file=...)`` reads them
    (EMA entry first, then ``state_dict`` / ``model``; ``module.`` prefixes stripped), always with
    ``weights_only=True``: a missing, damaged or unsafe file is a ``UserError`` naming the file and the cause."""
    return clean_state_dict(unwrap_state_dict(load_checkpoint_file(path), source=f'checkpoint {path}'))


@MODELS.register_module()
class TimmClassifier(BaseModel):
    """Image classifier around ``timm.create_model(model_name, num_classes=..., **model_kwargs)``.

    Args:
        model_name: any timm model name, e.g. ``'vrwkv_tiny_patch16_224'`` or ``'vit_tiny_patch16_224'``.
        num_classes: classifier outputs; checked against the data set before training.
        model_kwargs: further ``timm.create_model`` arguments (``drop_path_rate``, ``img_size``, ...).
        pretrained: ``True`` loads the model's default pretrained weights through timm; a path loads
            that file instead, with ``weights_only=True`` (official Vision-RWKV checkpoints are
            converted by the model's filter; timm adapts the classifier and the input channels).
        label_smoothing: label smoothing of the cross-entropy loss (also used by Mixup's targets).
        mixup: arguments of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``,
            ``switch_prob``, ...), applied to training batches; ``None`` disables it.
        data_preprocessor: mmengine data preprocessor config (moves batches to the device).

    Batches are ``dict(inputs=(B, 3, H, W) float, labels=(B,) int64)``. ``forward`` modes follow
    mmengine: ``'loss'`` → ``dict(loss=...)``, ``'predict'`` → one ``dict(pred_score=(num_classes,),
    gt_label=int)`` per image, ``'tensor'`` → logits (B, num_classes).
    """

    def __init__(self, model_name: str, num_classes: int, model_kwargs: Optional[dict] = None,
                 pretrained: Union[bool, str] = False, label_smoothing: float = 0.0,
                 mixup: Optional[dict] = None, data_preprocessor: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor)
        self.model_name = model_name
        self.num_classes = num_classes
        self.model = _create_classifier(model_name, num_classes, pretrained, **(model_kwargs or {}))
        self.mixup = Mixup(**{'label_smoothing': label_smoothing, **mixup, 'num_classes': num_classes}) \
            if mixup else None
        self.mixup_loss = SoftTargetCrossEntropy()
        self.hard_loss = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing > 0 \
            else torch.nn.CrossEntropyLoss()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints of the bare network (no ``model.`` keys: official Vision-RWKV checkpoints through
        ``load_from``) load into ``self.model`` through ``checkpoint_filter_fn``, which also selects the
        official Bi-WKV formula for them. Runs before the submodules load (torch and mmengine loaders)."""
        own = prefix + 'model.'
        keys = [k for k in state_dict if k.startswith(prefix)]
        if isinstance(self.model, VRWKV) and keys and not any(k.startswith(own) for k in keys):
            converted = checkpoint_filter_fn({k[len(prefix):]: state_dict.pop(k) for k in keys}, self.model)
            state_dict.update({own + k: v for k, v in converted.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, inputs: torch.Tensor, labels: Optional[torch.Tensor] = None, mode: str = 'tensor'):
        if mode == 'tensor':
            return self.model(inputs)
        if labels is None:
            raise ValueError(f"mode {mode!r} needs labels")
        if mode == 'loss':
            return dict(loss=self.loss(inputs, labels))
        if mode == 'predict':
            scores = self.model(inputs).float().softmax(dim=-1)
            return [dict(pred_score=s, gt_label=int(y)) for s, y in zip(scores, labels)]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """timm's label-smoothing cross-entropy, or its soft-target cross-entropy on Mixup/CutMix batches."""
        if self.mixup is not None and self.training and len(inputs) % 2 == 0:
            inputs, targets = self.mixup(inputs, labels)  # timm's Mixup needs an even batch
            return self.mixup_loss(self.model(inputs).float(), targets)
        return self.hard_loss(self.model(inputs).float(), labels)

    def layer_ids(self) -> dict[str, int]:
        """Depth index of every parameter for layer-wise lr decay: 0 = stem, larger = closer to the head.

        Uses the timm model's ``group_matcher``; parameters it does not match (the head) get the top index.
        """
        return timm_layer_ids(self.model, prefix='model.')
