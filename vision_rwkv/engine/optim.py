"""Optimizer construction: mmengine's param-wise options plus layer-wise learning-rate decay."""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..errors import ConfigError


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` with ``paramwise_cfg['layer_decay_rate']``.

    A parameter at depth ``i`` of a model with depths ``0..L`` (stem 0, head L) gets
    ``lr × layer_decay_rate ** (L - i)``, on top of mmengine's ``norm_decay_mult``,
    ``bias_decay_mult``, ``custom_keys`` and the other param-wise options. Depths come from
    ``model.layer_ids()`` or, for segmentors, from ``model.backbone``'s timm ``group_matcher``
    (see ``layer_ids``). Without ``layer_decay_rate`` it is mmengine's default constructor.
    """

    def add_params(self, params: list, module, prefix: str = '', is_dcn_module=None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        rate = self.paramwise_cfg.get('layer_decay_rate')
        if prefix or rate is None:
            return
        depth = layer_ids(module)
        top = max(depth.values())
        names = {id(p): n for n, p in module.named_parameters()}
        for group in params:
            name = names[id(group['params'][0])]
            group['lr'] = group.get('lr', self.base_lr) * rate ** (top - depth[name])


def layer_ids(model) -> dict[str, int]:
    """Depth of every parameter of ``model`` for layer-wise decay: 0 = stem, the largest = head.

    A model with ``layer_ids()`` answers itself. A segmentor with a timm-style ``backbone`` (one with
    ``group_matcher``) gets the backbone's groups (VRWKV: patch and position embedding 0, block i at
    i + 1); everything else (adapter, necks, decode heads) is at the top, as in the official recipes.
    """
    if hasattr(model, 'layer_ids'):
        return model.layer_ids()
    backbone = getattr(model, 'backbone', None)
    if backbone is None or not hasattr(backbone, 'group_matcher'):
        raise ConfigError(f'layer_decay_rate needs a model with layer_ids() or a backbone with group_matcher(); '
                          f'{type(model).__name__} has neither')
    depths = timm_layer_ids(backbone, prefix='backbone.')
    top = max(depths.values(), default=0)
    return {name: depths.get(name, top) for name, _ in model.named_parameters()}


def timm_layer_ids(model, prefix: str = '') -> dict[str, int]:
    """Depth of every parameter of a timm-style model from its ``group_matcher`` (0 = stem).

    Parameters the matcher leaves out (a classifier head) get the largest depth. Names carry ``prefix``.
    """
    from timm.models import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    top = max(groups.values(), default=0)
    return {prefix + name: groups.get(name, top) for name, _ in model.named_parameters()}
