"""Results pages written by the benchmark scripts: the header that says what wrote a page, and its atomic write.

A script that takes `--markdown PAGE` collects what it prints in a `Page` and writes it under a header:

    Written by `python benchmarks/NAME.py ARGS` (commit abc1234, x86_64, 2 CPU cores, no GPU, 2026-01-31).

The command is the script's own command line, so rerunning it rewrites the page. A run whose settings differ
from the script's defaults says so ("CPU-sized run ...; the full study is `python benchmarks/NAME.py`").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["Page", "add_markdown_option", "commit", "header", "machine", "script_command", "today", "write_page"]

REPO = Path(__file__).resolve().parents[1]


def commit() -> str:
    """This checkout's short commit (`git rev-parse --short HEAD`), or "unknown" outside git."""
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "no GPU"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def machine() -> str:
    """Architecture, CPU count and GPU, e.g. "x86_64, 2 CPU cores, no GPU"."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {_gpu()}"


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")


def script_command(argv: list[str] | None = None) -> str:
    """The running script's command line as one would type it from the repository root."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    name = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else argv[0]
    return shlex.join(["python", name, *argv[1:]])


def header(command: str, *, source: str | None = None, commit_id: str | None = None, when: str | None = None,
           note: str = "") -> str:
    """"Written by `COMMAND` [from `SOURCE`] (commit, machine, date)." and the note after it."""
    src = f" from `{source}`" if source else ""
    line = f"Written by `{command}`{src} (commit {commit_id or commit()}, {machine()}, {when or today()})."
    return f"{line} {note}".rstrip()


def write_page(path: Path, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename it: a failed run never leaves half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def add_markdown_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--markdown", default=None, metavar="PAGE",
                    help="also write the printed tables as markdown to PAGE, headed by this command, the commit, "
                         "the machine and the date (a results page under docs/results/)")


UNSCALED = frozenset({"markdown", "json", "out", "work", "cache", "data_root", "npz", "code"})  # where, not how much


def _changed(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The options of this run that differ from the script's defaults (paths and outputs left out)."""
    flags = {a.dest: a.option_strings[-1] for a in ap._actions if a.option_strings}
    return [flags[k] for k, v in vars(args).items()
            if k in flags and k not in UNSCALED and v != ap.get_default(k)]


class Page:
    """What a script prints, kept so that it can be written as a results page (`--markdown PAGE`)."""

    def __init__(self, ap: argparse.ArgumentParser, args: argparse.Namespace, title: str, *, level: int = 2):
        self.ap, self.args, self.title, self.level = ap, args, title, level
        self.blocks: list[str] = []

    def print(self, text: str = "") -> None:
        """Print `text` (markdown: a table, a paragraph) to stdout and keep it as one block of the page."""
        print(text, flush=True)
        if text.strip():
            self.blocks.append(text.strip("\n"))

    def note(self) -> str:
        changed = _changed(self.ap, self.args)
        if not changed:
            return ""
        full = f"python benchmarks/{Path(sys.argv[0]).name}"
        return (f"CPU-sized run ({', '.join(changed)} changed from the defaults); the full study is `{full}`.")

    def write(self) -> None:
        """Write the page to `--markdown`, when given."""
        path = getattr(self.args, "markdown", None)
        if path is None:
            return
        head = ["#" * self.level + f" {self.title}", "", header(script_command(), note=self.note())]
        write_page(Path(path), "\n\n".join(["\n".join(head), *self.blocks]) + "\n")
