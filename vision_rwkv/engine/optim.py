"""Optimizer construction: mmengine's param-wise options plus layer-wise learning-rate decay."""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from .errors import ConfigError


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` with ``paramwise_cfg['layer_decay_rate']``.

    A parameter at depth ``i`` of a model with depths ``0..L`` (``model.layer_ids()``: stem 0, head L)
    gets ``lr × layer_decay_rate ** (L - i)``, on top of mmengine's ``norm_decay_mult``,
    ``bias_decay_mult``, ``custom_keys`` and the other param-wise options. Without
    ``layer_decay_rate`` it is mmengine's default constructor.
    """

    def add_params(self, params: list, module, prefix: str = '', is_dcn_module=None) -> None:
        super().add_params(params, module, prefix, is_dcn_module)
        rate = self.paramwise_cfg.get('layer_decay_rate')
        if prefix or rate is None:
            return
        if not hasattr(module, 'layer_ids'):
            raise ConfigError(f'layer_decay_rate needs a model with layer_ids(); {type(module).__name__} has none')
        depth = module.layer_ids()
        top = max(depth.values())
        names = {id(p): n for n, p in module.named_parameters()}
        for group in params:
            name = names[id(group['params'][0])]
            group['lr'] = group.get('lr', self.base_lr) * rate ** (top - depth[name])
