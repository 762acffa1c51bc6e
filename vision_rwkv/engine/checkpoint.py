"""Safe checkpoints for mmengine runs: atomic writes and ``torch.load(weights_only=True)`` reads.

* ``AtomicLocalBackend`` (file backend ``'local_atomic'``, used by ``CheckpointHook`` through
  ``backend_args``) writes to a temporary file in the same folder, fsyncs and renames, so a run
  killed while saving leaves the previous checkpoint and ``last_checkpoint`` intact.
* ``use_safe_local_loader()`` makes mmengine read local checkpoints through
  ``load_checkpoint_file`` (``weights_only=True``, errors that name the file and the cause). The tools
  (``build_runner``) and ``segment_image`` call it; importing this module changes nothing in mmengine.
* ``PortableCheckpointHook`` stores mmengine's log history (``HistoryBuffer`` objects, numpy arrays)
  as plain lists in the checkpoint and rebuilds it on resume, which is what makes mmengine's own
  checkpoints loadable with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import CheckpointLoader

from vision_rwkv.checkpoint import load_checkpoint_file
from vision_rwkv_runtime.files import atomic_write


@register_backend('local_atomic')
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` and ``put_text``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), filepath)


def load_local_checkpoint(filename: str, map_location=None) -> dict:
    """``torch.load(filename, weights_only=True)`` with errors that name the file and the cause."""
    return load_checkpoint_file(filename, map_location=map_location)


def use_safe_local_loader() -> None:
    """Register ``load_local_checkpoint`` as mmengine's loader of local paths (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)


def history_to_plain(buffer: HistoryBuffer) -> dict:
    """A ``HistoryBuffer`` as plain lists (loadable with ``weights_only=True``)."""
    values, counts = buffer.data
    return dict(log_history=values.tolist(), count_history=counts.tolist(), max_length=buffer.max_length)


def numpy_to_plain(obj: Any) -> Any:
    """Numpy scalars and arrays inside dicts, lists and tuples replaced by Python numbers and lists."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, dict):
        return type(obj)((k, numpy_to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(numpy_to_plain(v) for v in obj)
    return obj


@HOOKS.register_module()
class PortableCheckpointHook(Hook):
    """Keeps mmengine checkpoints free of pickled objects: log history goes in and out as lists,
    numpy numbers in the run's metadata (ETA, metrics) are stored as Python numbers."""
    priority = 'LOWEST'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint.get('message_hub', {})
        scalars = hub.get('log_scalars', {})
        for key, value in scalars.items():
            if isinstance(value, HistoryBuffer):
                scalars[key] = history_to_plain(value)
        for key in ('runtime_info', 'resumed_keys'):
            if key in hub:
                hub[key] = numpy_to_plain(hub[key])
        if 'meta' in checkpoint:
            checkpoint['meta'] = numpy_to_plain(checkpoint['meta'])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, value in scalars.items():
            if isinstance(value, dict) and 'log_history' in value:
                scalars[key] = HistoryBuffer(**value)
