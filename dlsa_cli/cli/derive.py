"""Command options derived from the settings' declarations (`dlsa_cli.settings`).

A command names the settings dataclasses it takes as `Section`s; `settings_params`
adds one option per setting to its signature (flag, type, default and help from the
declaration), plus `--config FILE.toml`, and hands the command a `Given`: what the
config file and the flags set, section by section, for the library to resolve.
The same sections give the command's map from setting tokens (`FilterConfig.lr`)
to its own flags, through which every error is rewritten (`flag_map`, `name_flags`).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsa_cli.errors import InputError
from dlsa_cli.settings import TOKEN, Declared, Table, declared, parse_numbers, read_config

__all__ = ["Given", "Section", "flag_map", "name_flags", "settings_params"]

GIVEN = "settings"  # the parameter of a command that receives the Given


@dataclass(frozen=True)
class Section:
    """A settings dataclass as one command takes it.

    `key`: its table in a config file ("" for the top level) and in `Given`;
    `prefix`: put before every flag (`filter-`); `aliases`: also accept the
    unprefixed spelling (the flags fit-cascade had before the rule);
    `skip`: settings the command does not take; `only`: the settings that get an
    option here (the rest come from the config file, or another section's flag);
    `flags`: a flag of this command
    that differs from the rule (`lr` of the branch section is `--branch-lr`);
    `extra`: keys a config table may hold that are no setting of `cls` (`preset`),
    each with its option's help; `token`: how errors name this section's settings,
    when not by the class name (`CascadePlan.branch`).
    """

    key: str
    cls: type
    prefix: str = ""
    aliases: bool = False
    skip: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    flags: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None

    def settings(self) -> Iterator[Declared]:
        for d in declared(self.cls):
            if d.name not in self.skip and (self.only is None or d.name in self.only):
                yield d

    def flag(self, d_name: str, spec_flag: str | None = None) -> str:
        if d_name in self.flags:
            return self.flags[d_name]
        return "--" + self.prefix + (spec_flag or d_name.replace("_", "-"))

    def param(self, name: str) -> str:
        return f"{self.key or 'top'}__{name}"


@dataclass
class Given:
    """What a command was given: per section key, the config file's table and the flags set (None: not set)."""

    flags: dict[str, dict[str, Any]]
    tables: dict[str, dict[str, Any]]

    def layers(self, key: str) -> list[dict[str, Any]]:
        """Section `key`'s layers, lowest first: the config file's table, then the flags."""
        return [self.tables.get(key, {}), self.flags.get(key, {})]


def flag_map(sections: tuple[Section, ...]) -> dict[str, str]:
    """Each setting token (`FilterConfig.lr`) the command's errors may hold -> the command's flag for it.

    A section limited to some options (`only`) still names its other settings: by the rule's
    flag, which another section of the command declares (the branch's `epochs` is `--epochs`).
    """
    out: dict[str, str] = {}
    for s in reversed(sections):  # an earlier section names a shared class's token (the baseline's TrainConfig)
        token = s.token or s.cls.__name__
        for d in declared(s.cls):
            if d.name not in s.skip:
                out[f"{token}.{d.name}"] = s.flag(d.name, d.spec.flag)
        for key in s.extra:
            out[f"{token}.{key}"] = "--" + s.prefix + key
    return out


def name_flags(text: str, flags: Mapping[str, str]) -> str:
    """`text` with every setting token it holds replaced by this command's flag (unknown tokens stay)."""
    return TOKEN.sub(lambda m: flags.get(f"{m.group(1)}.{m.group(2)}", m.group(0)), text)


def _help(d: Declared, s: Section) -> str:
    """The declared help, its `name` references to settings of the same class written as this command's flags."""
    by_name = {x.name: s.flag(x.name, x.spec.flag) for x in declared(s.cls)}
    return re.sub(r"`([a-z_]+)`", lambda m: by_name.get(m.group(1), m.group(0)), d.spec.help)


def _shown(d: Declared) -> str | bool:
    if d.spec.shown is not None:
        return d.spec.shown or False
    if d.default is None:
        return False
    if isinstance(d.default, bool):
        return False
    return f"{d.default:g}" if isinstance(d.default, float) else str(d.default)


def _names(s: Section, d: Declared, taken: set[str]) -> list[str]:
    """The option's names: the rule's flag, and its old spelling where `aliases` and no other option has it."""
    flag = s.flag(d.name, d.spec.flag)
    names = [flag]
    if s.aliases and d.name not in s.flags:
        plain = "--" + (d.spec.flag or d.name.replace("_", "-"))
        if plain != flag and plain not in taken:
            names.append(plain)
    if d.spec.short and (s.aliases or not s.prefix):
        names.append(d.spec.short)
    if d.spec.alias and d.spec.alias not in taken:
        names.append(d.spec.alias)
    if d.type is bool and d.spec.switch:
        names = [f"{names[0]}/--{s.prefix}{d.spec.switch}", *names[1:]]
    return names


def _option(s: Section, d: Declared, taken: set[str]) -> inspect.Parameter:
    typ = str if d.type in (Path, tuple) else d.type
    opt = typer.Option(*_names(s, d, taken), help=_help(d, s), show_default=_shown(d))
    return inspect.Parameter(s.param(d.name), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[typ | None, opt])


def _extra_option(s: Section, key: str, help_text: str, taken: set[str]) -> inspect.Parameter:
    names = ["--" + s.prefix + key] + (["--" + key] if s.aliases and s.prefix and "--" + key not in taken else [])
    opt = typer.Option(*names, help=help_text, show_default=False)
    return inspect.Parameter(s.param(key), inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[str | None, opt])


CONFIG_OPT = Annotated[Path | None, typer.Option(
    "--config", help="A TOML file of settings (keys: the settings' names; see `dlsa inspect FILE --config`); "
    "options given on the command line override it.", show_default=False)]


def settings_params(fn: Callable[..., Any], sections: tuple[Section, ...]) -> Callable[..., Any]:
    """`fn` with one option per setting of `sections` and `--config` in its signature; `fn` gets a `Given`."""
    taken = {s.flag(d.name, d.spec.flag) for s in sections for d in s.settings()}
    taken |= {"--" + s.prefix + key for s in sections for key in s.extra}
    derived: list[inspect.Parameter] = []
    owner: dict[str, tuple[str, str]] = {}  # parameter -> (section key, setting or extra key)
    numbers = {s.param(d.name): s.flag(d.name, d.spec.flag) for s in sections for d in s.settings() if d.type is tuple}
    for s in sections:
        for d in s.settings():
            derived.append(_option(s, d, taken))
            owner[s.param(d.name)] = (s.key, d.name)
        for key, help_text in s.extra.items():
            derived.append(_extra_option(s, key, help_text, taken))
            owner[s.param(key)] = (s.key, key)
    config_param = inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CONFIG_OPT)
    sig = inspect.signature(fn, eval_str=True)  # the command's own options, their Annotated types resolved
    params: list[inspect.Parameter] = []
    for p in sig.parameters.values():  # the settings' options stand where the command takes its Given
        params += [*derived, config_param] if p.name == GIVEN else [p]
    params = _ordered(params)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given: dict[str, dict[str, Any]] = {s.key: {} for s in sections}
        for pname, (key, name) in owner.items():
            value = kwargs.pop(pname, None)
            if value is not None:
                given[key][name] = _typed(numbers, pname, value)
        config = kwargs.pop("config_file", None)
        tables = {} if config is None else read_config(config, _schema(sections))
        return fn(*args, **kwargs, **{GIVEN: Given(given, tables)})

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    return wrapper


def _typed(numbers: Mapping[str, str], pname: str, value: Any) -> Any:
    """A flag's value as its setting's type: 'R,G,B' text as numbers for a tuple setting."""
    if pname not in numbers:
        return value
    parsed = parse_numbers(value)
    if parsed is None:
        raise InputError(f"{numbers[pname]} {value}: not numbers",
                         hint=f"give numbers, e.g. {numbers[pname]} 0.485,0.456,0.406")
    return parsed


def _schema(sections: tuple[Section, ...]) -> dict[str, Table]:
    """The tables a command's config file may hold: each section key with the settings of its classes."""
    schema: dict[str, Table] = {}
    for s in sections:
        t = schema.get(s.key, Table(()))
        schema[s.key] = Table((*t.classes, s.cls), (*t.skip, *s.skip), (*t.extra, *s.extra))
    return schema


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """The parameters in their order, keyword-only from the first keyword-only one on (as Python requires)."""
    out: list[inspect.Parameter] = []
    for p in params:
        if out and out[-1].kind == inspect.Parameter.KEYWORD_ONLY:
            p = p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        out.append(p)
    return out
