"""What the pages say when the library speaks: its messages in the dashboard's words.

The library names command-line flags and commands (its messages serve the CLI too); a person on these pages needs
the widget or page that makes the same choice. One home below every page and helper module (it imports nothing of
app/), so the upload checks in ``files`` and the pages in ``widgets`` share it without importing each other.
"""

from __future__ import annotations

import re

__all__ = ["WIDGET_FOR", "COMMAND_FOR", "plain", "escape_markdown", "message"]

#: The library's command-line names, and the place on these pages where the same choice is made. A message
#: shown on a page names the widget, never a flag or a command (the CLI prints the library's words as they are).
WIDGET_FOR = {
    "--arch": "the 'Architecture' list on the Data & model page",
    "--num-classes": "'Number of classes' under the architecture on the Data & model page",
    "--arch-arg": "the 'Further arguments' box under the architecture on the Data & model page",
    "--ignore": "'Columns that are not model inputs' under 'More options' on the Data & model page",
    "--group": "the 'Group column(s)' choice on the Data & model page",
    "--label": "the 'Label column' choice on the Data & model page",
    "--missing-group": "'Rows without a group' under 'More options' on the Data & model page",
    "--sparsity": "the sparsity levels on the Audit page",
    "--compress": "the compressed variants on the Audit page",
    "--method": "the pruning method",
    "--max-evals": "'Most levels measured per method' on the Operating point page",
    "--max-violation": "'Max violation (points)' on the Operating point page",
    "--tol": "the search's smallest step",
    "--lo": "the lowest sparsity searched",
    "--hi": "the highest sparsity searched",
    "--grid": "the search's first levels",
    "--max-overall-drop": "'Max overall drop (points)' on the Operating point page",
    "--confidence": "'Read the 95% upper bound' on the Operating point page",
    "--epochs": "'Epochs' on the Mitigate page",
    "--seeds": "'Seeds' on the Mitigate page",
    "--finetune-epochs": "'Fine-tuning epochs after pruning' on the Audit page",
    "--device": "the device",
}
#: Commands a library message may name, and what a person does here instead.
COMMAND_FOR = {
    "fairprune models": "the 'Architecture' list on the Data & model page",
    "fairprune mitigate": "the Mitigate page",
    "fairprune search": "the Operating point page",
    "fairprune worker": "a background worker (the dashboard starts one; if none starts, ask whoever runs the server)",
}
_FLAG = re.compile(r"(\b(?:pass|use|add|with) )?`?(--[a-z][a-z0-9-]*)(?:[ =](?:[A-Z][A-Z_=]*|K|N))?`?")
_COMMAND = re.compile(r"`?(" + "|".join(map(re.escape, COMMAND_FOR)) + r")\b[^`()]*`?")


def plain(message: str) -> str:
    """A library message in the dashboard's words: each command-line flag becomes the widget that sets the same
    choice, each command the page or list that does the same; flags with no widget are named as settings."""
    def flag(m: re.Match) -> str:
        name = m.group(2)
        return ("set " if m.group(1) else "") + WIDGET_FOR.get(name, f"the setting '{name[2:].replace('-', ' ')}'")

    out = _COMMAND.sub(lambda m: COMMAND_FOR[m.group(1)], str(message))
    return _FLAG.sub(flag, out)


_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|~$])")


def escape_markdown(text: str) -> str:
    """``text`` shown as written: st.error and st.markdown read markdown, where ``__init__`` turns bold, ``*`` italic
    and ``$...$`` into formulas."""
    return _MARKDOWN.sub(r"\\\1", str(text))


def message(text: str) -> str:
    """A library message as the pages show it: :func:`plain` words (widgets, not flags), markdown escaped."""
    return escape_markdown(plain(text))
