"""Errors cptcore raises on purpose.

Every :class:`CptError` carries a one-line, user-facing message. The CLI prints it as
``error: <message>`` and exits with status 1 (the traceback only with ``CPT_DEBUG=1``).
Anything that is not a ``CptError`` is a bug and is shown with its traceback.
"""

from __future__ import annotations


class CptError(Exception):
    """Base class: a known failure with a one-line message for the user."""


class ConfigError(CptError):
    """A run config, CLI flag or plugin option is wrong (unknown key, wrong type, bad value)."""


class PluginError(CptError):
    """A plugin failed to load, implements a misspelled hook, or two plugins clash."""


class RegistryError(ConfigError):
    """A name is unknown to a registry, or two providers register the same name."""


class DataError(CptError):
    """Bad input data. The message names the file and, where there is one, the line
    (``path:line: problem``)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.reason = message
