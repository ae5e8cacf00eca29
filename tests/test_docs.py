"""The README and docs/ stay in step with the code: every ``fairprune ...`` line they show parses with the CLI's
own parser, every command and option the CLI offers is documented, every relative link resolves, the dashboard's
pages table names the pages app/main.py serves, and the README stays short with its two-command quick start."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from fairprune.run.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# Lines shown with a placeholder the parser cannot take; each must still be shown (checked below).
NOT_PARSED = {
    "fairprune report result.json --out report.html [--redact-samples]",  # [..] marks an optional flag
}

_INVOCATION = re.compile(r"(?:^|[\s/])fairprune\s+(?:-|[a-z])")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _outside_fences(text: str) -> list[str]:
    out, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        out.append("" if fence else line)
    return out


def _code_blocks(text: str) -> list[tuple[int, list[str]]]:
    """Fenced code blocks as (line number of their first line, lines)."""
    blocks, cur, start = [], None, 0
    for n, line in enumerate(text.split("\n"), 1):
        if line.lstrip().startswith("```"):
            if cur is None:
                cur, start = [], n + 1
            else:
                blocks.append((start, cur))
                cur = None
        elif cur is not None:
            cur.append(line)
    assert cur is None, "an unclosed code fence"
    return blocks


def _fairprune_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after the first `fairprune` (or `.../fairprune`) token that is followed by a subcommand or an
    option (so `docker build -t fairprune .` is not an invocation but `.venv/bin/fairprune audit ...` is)."""
    for i, tok in enumerate(tokens[:-1]):
        if tok.rsplit("/", 1)[-1] == "fairprune" and re.match(r"^(-|[a-z][a-z0-9_-]*$)", tokens[i + 1]):
            return tokens[i + 1:]
    return None


def doc_commands() -> list[tuple[str, str, list[str] | None]]:
    """Every fairprune command line in a code block: (where, the line as shown, argv or None if unsplittable).
    A line ending in `\\` continues on the next; in YAML, the indented lines starting with `--` that follow continue
    it too (a folded `run: >` or a list item)."""
    found = []
    for path in PAGES:
        for start, lines in _code_blocks(path.read_text()):
            i = 0
            while i < len(lines):
                where, line = f"{_rel(path)}:{start + i}", lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                if _INVOCATION.search(line.split("#", 1)[0]):
                    while i + 1 < len(lines) and lines[i + 1].strip().startswith("--"):
                        i += 1
                        line = line.rstrip() + " " + lines[i].strip()
                    shown = " ".join(line.split("#", 1)[0].split())
                    try:
                        argv = _fairprune_argv(shlex.split(line, comments=True))
                    except ValueError:
                        argv = None
                    found.append((where, shown.lstrip("- "), argv))
                i += 1
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


def _section(text: str, heading: str) -> str:
    """The body under the level-2 heading `heading` (exactly), up to the next level-2 heading."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no section '## {heading}'"
    return m.group(1)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, code marks and punctuation dropped, spaces to '-'."""
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_fences(path.read_text()):
        m = re.match(r"^#{1,6} (.+?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


# --------------------------------------------------------------------------------------------------- tests


def test_every_command_line_shown_parses_with_the_cli_parser():
    commands = doc_commands()
    assert len(commands) >= 30, f"expected the docs to show at least 30 fairprune command lines, found {len(commands)}"
    failures, used = [], {}
    for where, shown, argv in commands:
        if shown in NOT_PARSED:
            used[shown] = where
            continue
        if argv is None:
            failures.append(f"{where}: cannot split `{shown}` into arguments")
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = build_parser().parse_args(argv)
        except SystemExit as exit_:
            failures.append(f"{where}: `{shown}` does not parse (exit {exit_.code}): {err.getvalue().strip()}")
            continue
        if not args.command:
            failures.append(f"{where}: `{shown}` names no command")
    assert not failures, "\n".join(failures)
    assert set(used) == NOT_PARSED, f"allow-listed lines no longer shown: {sorted(NOT_PARSED - set(used))}"


def test_every_command_is_shown_in_a_code_block():
    shown = {argv[0] for _, _, argv in doc_commands() if argv}
    offered = set(_subcommands(build_parser())) - {"worker"}  # worker is started by the app; its options are in cli.md
    assert offered <= shown, f"commands no code block shows: {sorted(offered - shown)}"


def test_readme_cli_table_names_every_command_the_cli_offers():
    offered = set(_subcommands(build_parser()))
    rows = re.findall(r"^\| `fairprune ([a-z-]+)` \|", README.read_text(), re.M)
    assert len(rows) == len(set(rows)), f"a command listed twice in the README's CLI table: {rows}"
    assert set(rows) == offered, (f"README's CLI table lists {sorted(rows)}; the CLI offers {sorted(offered)} "
                                  f"(missing: {sorted(offered - set(rows))}, not offered: {sorted(set(rows) - offered)})")


def test_cli_reference_documents_every_option_of_every_command():
    parser = build_parser()
    text = (ROOT / "docs" / "cli.md").read_text()
    common = _section(text, "`fairprune audit`")
    missing = []
    for name, sub in _subcommands(parser).items():
        spans = re.findall(r"`([^`\n]+)`", _section(text, f"`fairprune {name}`") + common)
        for opt in sorted(_options(sub) | _options(parser)):
            if not any(re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", span) for span in spans):
                missing.append(f"{name} {opt}")
    assert not missing, f"options docs/cli.md does not document (in the command's section or audit's): {missing}"


def test_cli_reference_documents_every_worker_option():
    """`fairprune worker` has its own parser (the CLI hands it the arguments whole): read its options off --help."""
    from fairprune.run.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["worker", "--help"])
    assert exit_.value.code == 0
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out.getvalue())) - {"--help"}
    assert {"--home", "--once", "--poll"} <= options, f"expected the worker's options in its --help, found {options}"
    spans = re.findall(r"`([^`\n]+)`", _section((ROOT / "docs" / "cli.md").read_text(), "`fairprune worker`"))
    missing = [o for o in sorted(options) if not any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", s) for s in spans)]
    assert not missing, f"worker options docs/cli.md does not document: {missing}"


def test_relative_links_point_to_existing_files_and_anchors():
    broken, checked = [], 0
    for path in PAGES:
        for n, line in enumerate(_outside_fences(path.read_text()), 1):
            for target in _LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                checked += 1
                file, _, anchor = target.partition("#")
                dest = (path.parent / file).resolve() if file else path
                if not dest.exists():
                    broken.append(f"{_rel(path)}:{n}: {target} (no file {dest})")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{_rel(path)}:{n}: {target} (no heading with anchor #{anchor} in {_rel(dest)})")
    assert checked >= 40, f"expected at least 40 relative links, found {checked}"
    assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page():
    linked = {target.partition("#")[0] for target in _LINK.findall(README.read_text())}
    unlinked = [_rel(p) for p in DOCS if _rel(p) not in linked]
    assert len(DOCS) >= 10 and not unlinked, f"docs pages the README does not link: {unlinked} (of {len(DOCS)})"


def test_github_slug_matches_githubs_anchors():
    assert github_slug("`search.json` (schema `fairprune.search/1`)") == "searchjson-schema-fairprunesearch1"
    assert github_slug("Beyond pruning: quantization and 2:4 sparsity (`--compress`)") == \
        "beyond-pruning-quantization-and-24-sparsity---compress"
    assert github_slug('Statistics: what "significant" and the intervals mean') == \
        "statistics-what-significant-and-the-intervals-mean"


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n < 220, f"README.md has {n} lines; keep it under 220 and move reference material to docs/"


def test_quick_start_is_exactly_make_run_and_make_test():
    body = _section(README.read_text(), "Quick start")
    blocks = _code_blocks(body)
    assert len(blocks) == 1, f"the quick start should show one code block, found {len(blocks)}"
    commands = [line.split("#", 1)[0].strip() for line in blocks[0][1] if line.split("#", 1)[0].strip()]
    assert commands == ["make run", "make test"], f"the quick start shows {commands}"


def test_dashboard_table_names_the_pages_the_app_serves():
    served = re.findall(r'st\.Page\([^)]*title="([^"]+)"', (ROOT / "app" / "main.py").read_text())
    assert len(served) >= 5, f"expected the app's st.Page(...) list in app/main.py, found {served}"
    listed = re.findall(r"^\| \*\*(.+?)\*\* \|", _section(README.read_text(), "The dashboard"), re.M)
    assert listed == served, f"README's dashboard table lists {listed}; app/main.py serves {served} (in this order)"


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_each_docs_page_starts_with_its_question(path):
    if path == README:
        return
    first = path.read_text().split("\n", 1)[0]
    assert first.startswith("# ") and first.rstrip().endswith("?"), \
        f"{_rel(path)} should start with the question it answers as its title, found {first!r}"
