"""What ``tools/train.py`` and ``tools/test.py`` share: flags, config loading and launchers."""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..cli import add_debug_flag
from ..errors import ConfigError, InputFileError
from .checkpoint import use_safe_local_loader
from .config_check import check_cfg_options, check_config
from .extras import import_config_modules


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags both tools share: ``--work-dir``, ``--cfg-options``, ``--launcher``, ``--local_rank``."""
    parser.add_argument('--work-dir', help='directory for logs, checkpoints and curves')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_epochs=5 (keys must exist)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_debug_flag(parser)


def load_config(path: str, cfg_options: Optional[dict], work_dir: Optional[str]) -> Config:
    """Read ``path``, merge validated ``--cfg-options`` and choose the work dir as mmsegmentation does.

    The work dir is ``work_dir``, else the config's ``work_dir``, else ``./work_dirs/<config name>``.
    """
    if not osp.isfile(path):
        raise InputFileError(f'config file {path} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    _import_custom_modules(cfg)
    check_config(cfg)
    return cfg


def _import_custom_modules(cfg: Config) -> None:
    """Import ``custom_imports`` now, so registries are complete when the config is checked; an optional
    part of the install that a config needs (segmentation, RWKV-SAM) is set up on first use."""
    custom = cfg.get('custom_imports') or {}
    imports = custom.get('imports', [])
    import_config_modules([imports] if isinstance(imports, str) else imports,
                          allow_failed=custom.get('allow_failed_imports', False))


def setup_launcher(cfg: Config, launcher: str, local_rank: int = 0) -> None:
    """Set ``cfg.launcher``; on machines without CUDA, run distributed jobs with gloo on CPU.

    mmengine's PyTorch launcher pins a CUDA device and wraps the model with ``device_ids``; for CPU
    processes (``torchrun --nproc_per_node=N ... --launcher pytorch`` on a CPU machine) the process
    group is created here with gloo and DDP gets ``device_ids=None``.
    """
    os.environ.setdefault('LOCAL_RANK', str(local_rank))
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ConfigError(f'--launcher {launcher} needs CUDA; on CPU use torchrun with --launcher pytorch')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def enable_amp(cfg: Config) -> None:
    """``--amp``: mixed precision through mmengine's ``AmpOptimWrapper`` (CUDA only)."""
    if not torch.cuda.is_available():
        raise ConfigError('--amp needs a CUDA device (mixed precision is not used on CPU); drop --amp')
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        print('AMP is already enabled in the config', flush=True)
    elif wrapper != 'OptimWrapper':
        raise ConfigError(f'--amp works with optim_wrapper.type=OptimWrapper, not {wrapper}')
    else:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'


def build_runner(cfg: Config) -> Runner:
    """The config's ``runner_type`` if it names one, else mmengine's ``Runner``; its checkpoints (``load_from``,
    ``resume``) are read with ``weights_only=True`` and clear errors (``use_safe_local_loader``)."""
    use_safe_local_loader()
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
