"""Exceptions fairprune raises, and what the CLI maps them to.

``InputError`` is the user's input being wrong (a file, a column, an option): the CLI exits 2 with
one line ``error: ...``. ``Cancelled`` is a run stopped on request. Anything else is an internal
error (exit 3).
"""

from __future__ import annotations

__all__ = ["FairpruneError", "InputError", "Cancelled", "is_out_of_memory"]


class FairpruneError(Exception):
    """Base class of fairprune's own exceptions."""


class InputError(FairpruneError, ValueError):
    """Bad input. The message names the file/field, what was expected and what was found."""


class Cancelled(FairpruneError):
    """A run was cancelled through its cancel flag."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says memory ran out: MemoryError, torch's CPU allocator failing, CUDA out of memory
    (``torch.OutOfMemoryError`` is a RuntimeError saying so). The evaluation loop retries a smaller batch on
    it; the worker records the run as out of memory and goes on. (No torch import: the worker stays cheap.)"""
    if isinstance(err, MemoryError):
        return True
    if isinstance(err, RuntimeError):
        text = str(err)
        return ("out of memory" in text.lower() or "can't allocate memory" in text
                or "Cannot allocate memory" in text)
    return False
