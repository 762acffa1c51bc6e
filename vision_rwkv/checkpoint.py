"""Checkpoint files, for every loading path (timm, mmengine, mmseg, RWKV-SAM, the tools).

* ``load_checkpoint_file``: ``torch.load(..., weights_only=True)`` with errors that name the file and the real
  cause (missing, not a checkpoint, truncated, holding pickled objects); ``check_checkpoint_file`` is its cheap
  first half, for tools that build a model before reading the weights.
* ``unwrap_state_dict``: the weights inside a checkpoint container (EMA first, as timm's loader) and
  ``strip_prefixes``: wrapper prefixes (``module.``, ...) removed from a key.
Model-specific renaming stays with each model (``checkpoint_filter_fn``, ``backbone_checkpoint_filter``).
"""
import os.path as osp
import pickle
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch

from .errors import CheckpointError, InputFileError

__all__ = ['check_checkpoint_file', 'load_checkpoint_file', 'strip_prefixes', 'unwrap_state_dict']

# torch.save writes a zip archive; files of torch < 1.6 (and _use_new_zipfile_serialization=False) are pickles.
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'
# Entries of checkpoint containers that hold the weights, in order of preference (timm's loader: EMA first).
STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'module')


def _refused_object(error: pickle.UnpicklingError) -> Optional[str]:
    """The object torch's weights-only unpickler refused (e.g. 'GLOBAL __main__.Foo'), if that is the error."""
    for line in str(error).splitlines():
        if 'Unsupported global:' in line:
            return line.split('Unsupported global:', 1)[1].split(' was not an allowed global')[0].strip()
    return None


def check_checkpoint_file(path: str) -> None:
    """Cheap checks before a long run reads ``path``: it exists and starts like a checkpoint (a clear error
    for empty files, text, random bytes). ``InputFileError`` / ``CheckpointError`` as ``load_checkpoint_file``."""
    if not osp.isfile(path):
        raise InputFileError(f'checkpoint {path} does not exist')
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes)')
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_PROTO):
        raise CheckpointError(f'{path} is not a PyTorch checkpoint: it starts with bytes {head!r}, where a file '
                              f'written by torch.save starts with {_ZIP_MAGIC!r} (a zip archive)')


def load_checkpoint_file(path: str, map_location: Optional[Union[str, torch.device]] = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, no pickled code.

    Raises:
        InputFileError: ``path`` is not a file (a ``FileNotFoundError``).
        CheckpointError: the file is not a checkpoint, is truncated or corrupt, or holds other Python
            objects (refused). The message names the file and the cause; torch's traceback is not chained.
    """
    path = osp.expanduser(str(path))
    check_checkpoint_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_object(e)
        if refused is None:
            raise CheckpointError(f'checkpoint {path} is corrupt (its pickled data cannot be read: '
                                  f'{str(e).splitlines()[-1] if str(e) else type(e).__name__})') from None
        raise CheckpointError(f'checkpoint {path} holds Python objects that weights_only=True refuses to load '
                              f'({refused}); re-save it as tensors and plain containers') from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:  # how a damaged file surfaces
        raise CheckpointError(f'checkpoint {path} is truncated or corrupt ({type(e).__name__}: '
                              f'{str(e).splitlines()[0] if str(e) else "no detail"})') from None


def unwrap_state_dict(checkpoint: Any, source: str = 'the checkpoint',
                      keys: Sequence[str] = STATE_DICT_KEYS) -> Dict[str, Any]:
    """The weights inside a checkpoint: its first entry of ``keys`` that is a mapping, or the checkpoint itself.

    Raises:
        CheckpointError: the checkpoint is not a mapping; the message names ``source`` (e.g. the file).
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{source} holds a {type(checkpoint).__name__}, not a state dict (names -> tensors)')
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return dict(checkpoint[key])
    return dict(checkpoint)


def strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    """``key`` without any leading run of ``prefixes`` ('module.backbone.x' -> 'x')."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key
