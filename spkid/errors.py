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


class InputWarning(UserWarning):
    """One input of a many-file command was off but the command went on (no speech detected: the whole recording
    was used; unreadable: its row says why). The CLI prints each as ``spkid: warning: <file>: <problem>`` and exits
    with status 2 once the output is complete."""
