"""How every tool in ``tools/`` ends: one convention for errors (see ``vision_rwkv.errors``).

    if __name__ == '__main__':
        run_tool(main)

A ``UserError`` prints ``error: <message>`` on stderr and exits with code 2; any other exception is an
internal error and keeps its traceback (exit code 1). With ``--debug`` on the command line (every tool's
parser declares it through ``add_debug_flag``) user errors show their traceback too.
"""
import argparse
import sys
from typing import Callable, Optional

from .errors import UserError

__all__ = ['add_debug_flag', 'run_tool']


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Declare ``--debug``: show the traceback of every error, user errors included."""
    parser.add_argument('--debug', action='store_true', help='show the traceback of every error')


def run_tool(main: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``main`` under the error convention; ``main``'s return value is the exit code.

    A distributed run's process group is destroyed on the way out, whatever happened: left to the
    interpreter's exit, gloo's threads may be torn down while joinable, which aborts the process
    ("terminate called without an active exception").
    """
    try:
        code = main()
    except UserError as e:
        if '--debug' in sys.argv[1:]:
            raise
        print(f'error: {_one_line(e)}', file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        _destroy_process_group()
    sys.exit(code or 0)


def _destroy_process_group() -> None:
    """Destroy torch's default process group if the tool started one (a tool that never imported torch did not)."""
    torch = sys.modules.get('torch')
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _one_line(error: Exception) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker, the original message only."""
    message = str(error)
    if 'Original Traceback' not in message:
        return message
    last = message.strip().splitlines()[-1]
    prefix = f'{type(error).__name__}: '
    return last.split(prefix, 1)[1] if prefix in last else last
