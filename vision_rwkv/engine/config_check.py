"""Config validation before a run starts: unknown keys become one clear error with suggestions.

``check_cfg_options`` rejects ``--cfg-options`` keys that name nothing in the config (a typo would
otherwise be merged silently and ignored) and text where the config has a number. ``check_config`` compares every ``dict(type=...)`` of the
sections that mmengine builds from registries with the signature of the class it names.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterator

from mmengine.config import Config
from mmengine.registry import (DATA_SAMPLERS, DATASETS, HOOKS, LOOPS, METRICS, MODELS, OPTIM_WRAPPERS,
                               OPTIMIZERS, PARAM_SCHEDULERS, VISBACKENDS, VISUALIZERS, Registry)
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, TestLoop, ValLoop

from ..errors import ConfigError

# Arguments that mmengine supplies itself when it builds these objects.
_RUNTIME_ARGS = {'runner', 'dataloader', 'evaluator', 'optimizer', 'params', 'module', 'self'}
# Layer configs that mmcv's builders read with extra keys (norm ``requires_grad``, activation
# ``inplace``) or that are not registry types (``init_cfg``): not checked against a signature.
_LAYER_CFG_KEYS = {'norm_cfg', 'act_cfg', 'conv_cfg', 'init_cfg', 'upsample_cfg'}


def _leaf_paths(node: Any, prefix: str = '') -> Iterator[str]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, (list, tuple)) else ()
    for key, value in items:
        path = f'{prefix}{key}'
        yield path
        yield from _leaf_paths(value, path + '.')


def _lookup(node: Any, path: str) -> tuple[bool, Any]:
    for part in path.split('.'):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def check_cfg_options(cfg: Config, options: dict) -> None:
    """Every ``--cfg-options`` key must exist, or be a new argument of a ``dict(type=...)`` that exists."""
    tree = cfg.to_dict()
    for key, value in (options or {}).items():
        found, current = _lookup(tree, key)
        if found:
            _check_number(key, current, value)
            continue
        parent_key = key.rpartition('.')[0]
        found, parent = _lookup(tree, parent_key) if parent_key else (False, None)
        if found and isinstance(parent, dict) and 'type' in parent:
            continue  # checked against the class signature by check_config
        close = difflib.get_close_matches(key, list(_leaf_paths(tree)), n=3, cutoff=0.6)
        hint = f'; did you mean {" or ".join(close)}?' if close else ''
        raise ConfigError(f'--cfg-options: unknown config key {key!r} (not in {cfg.filename}){hint}')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(key: str, current: Any, value: Any) -> None:
    """A number in the config stays a number: ``model.num_classes=abc`` is an error here, not a TypeError
    from deep inside the model's constructor."""
    if _is_number(current) and not _is_number(value):
        raise ConfigError(f'--cfg-options {key}={value!r}: expected a number (the config has {current!r})')


def _accepted_args(obj) -> tuple[set[str], bool]:
    """Argument names of a class or function and whether it takes ``**kwargs``."""
    params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters.values()
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}, var_kw


def _check_args(path: str, obj, cfg: dict) -> None:
    accepted, var_kw = _accepted_args(obj)
    if var_kw:
        return
    for key in cfg:
        if key == 'type' or key in accepted:
            continue
        close = difflib.get_close_matches(key, sorted(accepted - _RUNTIME_ARGS), n=3, cutoff=0.5)
        hint = f' Did you mean {" or ".join(close)}?' if close else ''
        raise ConfigError(f'{path}: {obj.__name__} has no argument {key!r}.{hint} '
                          f'It takes: {", ".join(sorted(accepted - _RUNTIME_ARGS))}')


def _check_typed(path: str, node: Any, registry: Registry, scope: str | None, nested: bool,
                 root: bool = True) -> None:
    """Check ``node`` (and, if ``nested``, typed dicts inside it) against ``registry``.

    Nested dicts may name types of other registries (``init_cfg``, norm layers): those are skipped.
    """
    if isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _check_typed(f'{path}[{i}]', item, registry, scope, nested, root)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get('type'), str):
        with registry.switch_scope_and_registry(scope) as reg:
            obj = reg.get(node['type'])
        if obj is None and root:
            raise ConfigError(f'{path}: type {node["type"]!r} is not registered in {registry.name!r} '
                              '(missing custom_imports or a typo?)')
        if obj is not None:
            _check_args(path, obj, node)
    if nested:
        for key, value in node.items():
            if key not in _LAYER_CFG_KEYS:
                _check_typed(f'{path}.{key}', value, registry, scope, nested, root=False)


def _check_loop(path: str, cfg: dict | None, default) -> None:
    if not cfg:
        return
    if 'type' in cfg:
        _check_typed(path, cfg, LOOPS, None, nested=False)
    else:
        if 'by_epoch' in cfg:
            default = EpochBasedTrainLoop if cfg['by_epoch'] else IterBasedTrainLoop
        _check_args(path, default, {k: v for k, v in cfg.items() if k != 'by_epoch'})


def check_config(cfg: Config) -> None:
    """Raise ``ConfigError`` for a ``dict(type=...)`` whose keys its class does not accept.

    Covers model (nested), data sets, samplers, optimizer wrapper and optimizer, parameter
    schedulers, hooks, metrics, visualizer and the train/val/test loops.
    """
    scope = cfg.get('default_scope')
    _check_typed('model', cfg.get('model'), MODELS, scope, nested=True)
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader') or {}
        _check_typed(f'{split}_dataloader.dataset', loader.get('dataset'), DATASETS, scope, nested=False)
        _check_typed(f'{split}_dataloader.sampler', loader.get('sampler'), DATA_SAMPLERS, scope, nested=False)
        _check_typed(f'{split}_evaluator', cfg.get(f'{split}_evaluator'), METRICS, scope, nested=False)
    wrapper = cfg.get('optim_wrapper') or {}
    _check_typed('optim_wrapper', {k: v for k, v in wrapper.items()
                                   if k not in ('optimizer', 'paramwise_cfg', 'constructor')},
                 OPTIM_WRAPPERS, scope, nested=False)
    _check_typed('optim_wrapper.optimizer', wrapper.get('optimizer'), OPTIMIZERS, scope, nested=False)
    _check_typed('param_scheduler', cfg.get('param_scheduler'), PARAM_SCHEDULERS, scope, nested=False)
    for name, hook in (cfg.get('default_hooks') or {}).items():
        _check_typed(f'default_hooks.{name}', hook, HOOKS, scope, nested=False)
    _check_typed('custom_hooks', cfg.get('custom_hooks'), HOOKS, scope, nested=False)
    _check_typed('visualizer', cfg.get('visualizer'), VISUALIZERS, scope, nested=False)
    _check_typed('visualizer.vis_backends', (cfg.get('visualizer') or {}).get('vis_backends'),
                 VISBACKENDS, scope, nested=False)
    _check_loop('train_cfg', cfg.get('train_cfg'), EpochBasedTrainLoop)
    _check_loop('val_cfg', cfg.get('val_cfg'), ValLoop)
    _check_loop('test_cfg', cfg.get('test_cfg'), TestLoop)
