"""Errors a user should see as one clear line (the CLI prints ``str(err)`` and exits 2)."""

from __future__ import annotations

from pathlib import Path


class JetevoError(Exception):
    """Base class for problems caused by the user's input or environment, not by a bug."""


class InputError(JetevoError):
    """A file that cannot be used as given; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable: a worker process hands it to the parent
        return (type(self), (self.path, self.problem))


class SettingError(JetevoError, ValueError):
    """A setting (command-line option, config value or argument) that cannot be used; the
    message names the setting and what it takes. A ``ValueError`` too, for Python callers."""
