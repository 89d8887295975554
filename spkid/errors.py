"""Errors the CLI turns into one-line messages (``spkid: error: <file>: <problem>``).

Convention: the message starts with the file or setting it is about, then a colon: ``f"{path}: problem"``.
"""


class SpkidError(Exception):
    """Base class: a user-facing problem with input, config or environment."""


class DataError(SpkidError):
    """Bad or missing data file (HW4 json, .pt tensor, audio, CSV)."""


class ConfigError(SpkidError):
    """Unknown config key, wrong type or inconsistent values."""


class CheckpointError(SpkidError):
    """Missing, corrupt or incompatible checkpoint."""
