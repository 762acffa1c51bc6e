"""Errors the training tools report as one clear line (no traceback from deep inside)."""


class ConfigError(ValueError):
    """A config names something that does not exist or does not fit (model, key, class count)."""
