"""``transformers``, imported offline and quiet: the one place the Hugging Face checkpoint loader (zoo) and the text
tokenisation (data) import it from."""

from __future__ import annotations

import os

from .errors import InputError

__all__ = ["import_transformers"]


def import_transformers(purpose: str):
    """The ``transformers`` module with no hub requests, no progress bars and no advice on stderr; an InputError
    naming ``purpose`` (e.g. "text (--text)") when it is not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - a dependency in requirements.txt
        raise InputError(f"{purpose} needs the transformers package (pip install -r requirements.txt); "
                         f"found it missing ({err})") from err
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers
