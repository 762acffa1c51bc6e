"""The optional parts of the install, set up the first time a config needs them.

``bash tools/setup_env.sh core`` installs what classification needs (torch, timm, mmengine). A segmentation
config imports ``vision_rwkv.mmseg`` (mmsegmentation and mmcv, which is compiled from source once) and an
RWKV-SAM config ``vision_rwkv.engine.sam`` (scipy, pycocotools): when those packages are missing and the tool
runs in the project's ``.venv``, ``import_config_modules`` runs ``tools/setup_env.sh <part>`` first, saying
so in one line; elsewhere it stops with the command to run.
"""
from __future__ import annotations

import importlib
import os.path as osp
import subprocess
import sys
import warnings
from typing import Dict, Sequence, Tuple

from ..errors import ConfigError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SETUP = osp.join(REPO, 'tools', 'setup_env.sh')
# config module -> (setup_env.sh part, the packages it brings, what installing them costs)
EXTRAS: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    'vision_rwkv.mmseg': ('seg', ('mmseg', 'mmcv', 'ftfy', 'regex'),
                          'mmsegmentation, and mmcv 2.1.0 compiled from source: 10-17 min on 2 CPU cores, once'),
    'vision_rwkv.engine.sam': ('sam', ('scipy', 'pycocotools'), 'scipy and pycocotools: about a minute'),
}


def _missing_package(error: ImportError, packages: Sequence[str]) -> bool:
    """Whether ``error`` is one of ``packages`` (or a submodule) not being installed."""
    name = (getattr(error, 'name', None) or '').split('.')[0]
    return isinstance(error, ModuleNotFoundError) and name in packages


def _in_project_venv() -> bool:
    return osp.realpath(sys.prefix) == osp.realpath(osp.join(REPO, '.venv'))


def _set_up(module: str) -> None:
    part, _, cost = EXTRAS[module]
    command = f'bash tools/setup_env.sh {part}'
    if not _in_project_venv():
        raise ConfigError(f'this config needs {module}, whose packages are not installed: run `{command}` '
                          f'in {REPO} ({cost})')
    print(f'first use of {module}: installing {cost} (`{command}`)', flush=True)
    if subprocess.run(['bash', SETUP, part], cwd=REPO).returncode:
        raise ConfigError(f'`{command}` failed (its output is above)')
    importlib.invalidate_caches()


def import_config_modules(modules: Sequence[str], allow_failed: bool = False) -> None:
    """Import a config's ``custom_imports``, setting up a missing optional part first (see the module).
    With ``allow_failed`` (mmengine's ``allow_failed_imports``) a module that cannot be imported is a warning."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            if module in EXTRAS and _missing_package(e, EXTRAS[module][1]):
                _set_up(module)
                importlib.import_module(module)
            elif allow_failed:
                warnings.warn(f'custom_imports: {module} failed to import ({e}); skipped')
            else:
                raise
