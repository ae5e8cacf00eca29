"""Exceptions fairprune raises, and what the CLI maps them to.

``InputError`` is the user's input being wrong (a file, a column, an option): the CLI exits 2 with
one line ``error: ...``. ``Cancelled`` is a run stopped on request. Anything else is an internal
error (exit 3).
"""

from __future__ import annotations

__all__ = ["FairpruneError", "InputError", "Cancelled"]


class FairpruneError(Exception):
    """Base class of fairprune's own exceptions."""


class InputError(FairpruneError, ValueError):
    """Bad input. The message names the file/field, what was expected and what was found."""


class Cancelled(FairpruneError):
    """A run was cancelled through its cancel flag."""
