"""What every command shares: the Typer app, common options, error handling, output.

Data goes to stdout (rich tables, or JSON with `--json`); progress, logs and
warnings go to stderr. Progress bars and logs appear only when stderr is a
terminal and `--quiet` is not given; warnings appear unless `--quiet`.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from dlsa_cli.cli.derive import Section, flag_map, name_flags, settings_params
from dlsa_cli.errors import DlsaError

__all__ = [
    "DeviceOpt",
    "JsonOpt",
    "QuietOpt",
    "Reporter",
    "SeedOpt",
    "app",
    "command",
    "emit_json",
    "stdout",
]

class _OneLineUsage(TyperGroup):
    """The app's group: a usage error (a wrong type, a missing argument, an unknown option or command)
    is one line on stderr with the usage on it, instead of Typer's boxed message; exit code 2."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as e:
            _usage_error(e)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            _usage_error(e)


def _usage_error(e: UsageError) -> NoReturn:
    if isinstance(e, NoArgsIsHelpError):  # `dlsa` alone, or a command without its arguments: the help
        raise e
    hint = ""
    if e.ctx is not None:
        usage = " ".join(e.ctx.get_usage().split()).removeprefix("Usage: ")
        hint = f" (usage: {usage}; '{e.ctx.command_path} -h' for help)"
    _error_console().print(f"[bold red]error:[/] {escape(e.format_message() + hint)}")
    raise typer.Exit(e.exit_code)


app = typer.Typer(
    name="dlsa",
    help=(
        "DLSA for long-tailed recognition on feature files: extract features, fit the "
        "Gaussian-mixture flow filter, split samples by it, fit classifiers, predict "
        "through the cascade and evaluate with the long-tail metrics."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    cls=_OneLineUsage,
    context_settings={"help_option_names": ["-h", "--help"]},
)

stdout = Console(highlight=False, soft_wrap=False)
if not stdout.is_terminal and "COLUMNS" not in os.environ:
    stdout.width = 160  # a table sent to a file or a pipe: wide enough that no cell is cut to "…"


def _print_version(value: bool) -> None:
    if value:
        from dlsa_cli import __version__

        sys.stdout.write(f"dlsa {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """DLSA for long-tailed recognition on feature files."""

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, logs or warnings on stderr.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="Where to compute: auto (CUDA when present), cpu, cuda or cuda:N.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed on the same device repeats a run.")]

F = TypeVar("F", bound=Callable[..., Any])

# The running command's map from setting tokens to its flags (set by `guarded`, read by `Reporter`).
_FLAGS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("dlsa_flags", default=MappingProxyType({}))


def _error_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def guarded(fn: F, flags: Mapping[str, str] | None = None) -> F:
    """Turn library errors into one line on stderr and a non-zero exit; the settings the line
    names (`FilterConfig.lr`) are written as this command's flags (`flags`, see cli.derive)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _FLAGS.set(flags or {})  # warnings name settings by this command's flags too (Reporter)
        try:
            with _rank_zero_stdout():
                return fn(*args, **kwargs)
        except DlsaError as e:
            e = _agreed(e)
            if _rank() == 0:
                _error_console().print(f"[bold red]error:[/] {escape(name_flags(str(e), flags or {}))}")
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # the library turns its own writes' errors into DlsaError; this is the net
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _error_console().print(f"[bold red]error:[/] {escape(where + (e.strerror or str(e)))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _error_console().print("[bold red]interrupted[/]: no output was written")
            raise typer.Exit(130) from None
        finally:
            _FLAGS.reset(token)

    return wrapper  # type: ignore[return-value]


def _rank() -> int:
    """This process's rank under torchrun (0 alone)."""
    import os

    return int(os.environ.get("RANK", "0"))


@contextmanager
def _rank_zero_stdout():
    """Under torchrun only rank 0 prints data: the other ranks' stdout goes nowhere."""
    import os

    if _rank() == 0:
        yield
        return
    with open(os.devnull, "w") as null:
        saved, sys.stdout = sys.stdout, null
        try:
            yield
        finally:
            sys.stdout = saved


def _agreed(e: DlsaError) -> DlsaError:
    """Under torchrun: the error every rank agrees on (the first failing rank's), so rank 0 alone shows it."""
    if getattr(e, "agreed", False):
        return e
    from dlsa_cli.runtime.distributed import agree, current

    if not current().active:
        return e
    try:
        agree(e)
    except DlsaError as first:
        return first
    return e


def command(name: str, *, sections: tuple[Section, ...] = (), **kwargs: Any) -> Callable[[F], F]:
    """Register a guarded subcommand on the app; `sections`: the settings it takes, one option each (cli.derive)."""

    def deco(fn: F) -> F:
        target = settings_params(fn, sections) if sections else fn
        app.command(name, **kwargs)(guarded(target, flag_map(sections)))
        return fn

    return deco


def emit_json(obj: Any, *, nonfinite_as_null: bool = False) -> None:
    """Print one strict JSON object on stdout (NaN/infinity refused, or shown as null when asked)."""
    from dlsa_cli.io.files import strict_json

    sys.stdout.write(strict_json(obj, nonfinite_as_null=nonfinite_as_null) + "\n")
    sys.stdout.flush()


class Reporter:
    """Progress, logs and warnings on stderr, honouring `--quiet` and non-terminals."""

    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet or _rank() != 0  # under torchrun, rank 0 alone reports
        self.interactive = (not quiet) and self.console.is_terminal

    def log(self, message: str) -> None:
        if self.interactive:
            self.console.print(name_flags(message, _FLAGS.get()))

    def note(self, message: str) -> None:
        """A line the user should see (where an output went), unless --quiet; also when stderr is not a terminal."""
        if not self.quiet:
            self.console.print(escape(name_flags(message, _FLAGS.get())))

    def warn(self, message: str) -> None:
        """A warning line; the settings it names are written as the running command's flags."""
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/] {escape(name_flags(message, _FLAGS.get()))}")

    @contextmanager
    def progress(self, description: str, total: float | None):
        """A progress bar; yields `update(advance=1, **fields)`. Fields show as `text`."""
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[text]}"),
            console=self.console,
            disable=not self.interactive,
            transient=False,
        )
        with bar:
            task = bar.add_task(description, total=total, text="")

            def update(advance: float = 1, text: str | None = None) -> None:
                if text is None:
                    bar.update(task, advance=advance)
                else:
                    bar.update(task, advance=advance, text=text)

            yield update
