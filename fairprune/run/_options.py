"""Command-line options shared by the commands' modules (cli.py and _mitigate_cli.py) without importing each other."""

from __future__ import annotations

__all__ = ["input_options"]


def input_options(args) -> dict:
    """The InputSpec keys of --inputs, --text and --max-length."""
    return dict(inputs=tuple(args.inputs) if args.inputs else None, text=args.text, max_length=args.max_length)
