"""Errors in what a user gave us (a config, a file, a data set, a prompt), as opposed to bugs.

Every tool in ``tools/`` runs through ``vision_rwkv.cli.run_tool``: a ``UserError`` ends the process with one
line, ``error: <message>``, and exit code 2; any other exception is an internal error and keeps its
traceback (``--debug`` shows the traceback of user errors too). Each class also derives from the built-in
exception that library callers would catch (``ValueError``, ``FileNotFoundError``, ...).
"""

__all__ = ['CheckpointError', 'ConfigError', 'CorruptImageError', 'ExportError', 'InputError', 'InputFileError',
           'OutputExistsError', 'UserError']


class UserError(Exception):
    """The user's input is wrong; the message says what and, where it can, how to fix it."""


class ConfigError(UserError, ValueError):
    """A config (or ``--cfg-options``) names something that does not exist or does not fit."""


class InputFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output path the user named exists and holds something else."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be used: not a checkpoint, truncated, holding pickled objects, or holding
    weights that do not fit. The message names the file and the cause."""


class InputError(UserError, ValueError):
    """An image or a prompt that a model cannot take (wrong dtype or shape, points outside the image, NaN)."""


class ExportError(UserError, ValueError):
    """A model (or a mode of it) that cannot be exported as asked, or an export file that does not fit."""


class CorruptImageError(UserError, OSError):
    """An image file cannot be decoded; the message names the file."""
