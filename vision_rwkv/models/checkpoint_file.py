"""Reading checkpoint files safely: ``torch.load(..., weights_only=True)`` with errors that name the file."""
import os.path as osp
import pickle
from typing import Any, Optional, Union

import torch

__all__ = ['load_checkpoint_file']


def _unpickling_cause(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only error that names the refused object."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if 'WeightsUnpickler error:' in line:
            return line.split('WeightsUnpickler error:', 1)[1].split('. Please')[0].strip()
    return lines[-1] if lines else type(error).__name__


def load_checkpoint_file(path: str, map_location: Optional[Union[str, torch.device]] = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, no pickled code.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        RuntimeError: the file holds other Python objects (refused), or is truncated or corrupt. The
            message names the file and the cause; torch's traceback is not chained to it.
    """
    path = osp.expanduser(str(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f'checkpoint {path} holds Python objects that weights_only=True refuses to load '
                           f'({_unpickling_cause(e)}); re-save it as tensors and plain containers') from None
    except Exception as e:  # a damaged file surfaces as RuntimeError (zip reader), EOFError, KeyError, ...
        raise RuntimeError(f'checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})') from None
