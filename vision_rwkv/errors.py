"""Errors in what a user gave us (a config, a file, a data set, a prompt), as opposed to bugs.

The classes live in ``vision_rwkv_runtime.errors``, the torch-free package that runs exported models, so that
both packages raise and catch the same classes; see there for the convention.
"""
from vision_rwkv_runtime.errors import (CheckpointError, ConfigError, CorruptImageError, ExportError, InputError,
                                        InputFileError, OutputExistsError, UserError)

__all__ = ['CheckpointError', 'ConfigError', 'CorruptImageError', 'ExportError', 'InputError', 'InputFileError',
           'OutputExistsError', 'UserError']
