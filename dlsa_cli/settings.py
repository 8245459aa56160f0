"""Settings declared once: a dataclass field carries its default, help, allowed values and range.

A stage's settings are a dataclass (`FilterConfig`, `TrainConfig`, `CascadePlan`, ...)
whose fields are made with `setting()`. Everything else is derived from that one
declaration: the commands' options (`dlsa_cli.cli.derive`), the range checks
(`check_settings`), the keys of a `--config` TOML file (`from_table`), and what
provenance records and `dlsa inspect --config` prints back (`to_table`).

Errors name a setting as `Owner.name` (`FilterConfig.lr`): a library caller reads
the field it passed, and the CLI rewrites the token into the flag of the command
at hand (`--lr` in fit-filter, `--filter-lr` in fit-cascade).
"""

from __future__ import annotations

import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

from dlsa_cli.errors import InputError

__all__ = [
    "Rule",
    "SettingError",
    "Spec",
    "Table",
    "at_least",
    "check_settings",
    "declared",
    "dump_toml",
    "finite_at_least",
    "from_table",
    "in_range",
    "positive",
    "read_config",
    "recorded_settings",
    "resolve",
    "setting",
    "setting_token",
    "to_table",
]

TOKEN = re.compile(r"\b((?:[A-Z][A-Za-z]*)(?:\.[a-z]+)?)\.([a-z][a-z0-9_]*)\b")


@dataclass(frozen=True)
class Rule:
    """A range a value must lie in: `ok(value)` and the words that say it (`must be >= 1`)."""

    ok: Callable[[Any], bool]
    text: str


def at_least(n: int, text: str | None = None) -> Rule:
    return Rule(lambda v: v >= n, text or f"must be at least {n}")


def positive() -> Rule:
    return Rule(lambda v: v > 0 and math.isfinite(v), "must be a finite number > 0")


def finite_at_least(n: float) -> Rule:
    return Rule(lambda v: n <= v < math.inf, f"must be a finite number >= {n:g}")


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def ok(v: float) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return Rule(ok, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


@dataclass(frozen=True)
class Spec:
    """What a setting is, beside its type and default.

    `flag`: its option name when not `--name` with dashes (`side_input` is `--input`);
    `short`: a one-letter alias; `alias`: a flag it had before (kept so scripts go on
    working); `shown`: the default as help text shows it, where the value None stands
    for something (`hidden`: "D"); `switch`: a boolean's negative form
    (`--no-singletons`), else a plain flag.
    """

    help: str
    choices: tuple[str, ...] | None = None
    rule: Rule | None = None
    flag: str | None = None
    short: str | None = None
    shown: str | None = None
    switch: str | None = None
    alias: str | None = None


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, rule: Rule | None = None,
            flag: str | None = None, short: str | None = None, shown: str | None = None,
            switch: str | None = None, alias: str | None = None) -> Any:
    """A dataclass field declared as a setting (see `Spec`)."""
    spec = Spec(help, choices, rule, flag, short, shown, switch, alias)
    return field(default=default, metadata={"setting": spec})


@dataclass(frozen=True)
class Declared:
    """One setting of a dataclass, as read from its declaration."""

    name: str
    type: type  # int, float, str, bool or Path (None is allowed where `optional`)
    optional: bool
    default: Any
    spec: Spec


def declared(cls: type) -> Iterator[Declared]:
    """The settings of dataclass `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        spec = f.metadata.get("setting")
        if spec is None:
            continue
        base, optional = _unwrap(hints[f.name])
        yield Declared(f.name, base, optional, _default(f), spec)


def _unwrap(hint: Any) -> tuple[type, bool]:
    """The setting's base type (`tuple` for any tuple of numbers) and whether None is allowed."""
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, optional = args[0], len(args) < len(typing.get_args(hint))
    return (tuple if typing.get_origin(hint) is tuple else hint), optional


def _default(f: Field[Any]) -> Any:
    return f.default if f.default is not MISSING else None


class SettingError(InputError):
    """A setting out of its range or of the wrong type; `token` is `Owner.name`."""

    def __init__(self, token: str, value: Any, why: str, *, path: str | Path | None = None):
        self.token, self.value, self.why = token, value, why
        super().__init__(f"{token} {_show(value)}: {why}", path=path)


def setting_token(obj_or_cls: Any, name: str) -> str:
    """How errors name setting `name` of a settings object or class: `FilterConfig.lr`."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__name__}.{name}"


def check_settings(obj: Any) -> None:
    """Refuse the first setting of `obj` whose value has the wrong type, is not a choice, or is out of range."""
    for d in declared(type(obj)):
        value = getattr(obj, d.name)
        why = _why_not(d, value)
        if why is not None:
            raise SettingError(setting_token(obj, d.name), value, why)


def _why_not(d: Declared, value: Any) -> str | None:
    if value is None:
        return None if d.optional else f"must be {_kind(d.type)}"
    if not _is_type(value, d.type):
        return f"must be {_kind(d.type)}"
    if d.spec.choices is not None and value not in d.spec.choices:
        return f"use one of {', '.join(d.spec.choices)}"
    if d.spec.rule is not None and not d.spec.rule.ok(value):
        return d.spec.rule.text
    return None


def _is_type(value: Any, t: type) -> bool:
    if t is tuple:  # a tuple of numbers (R,G,B)
        return isinstance(value, (list, tuple)) and all(_is_type(x, float) for x in value)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, t)


def _kind(t: type) -> str:
    kinds = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path",
             tuple: "a list of numbers"}
    return kinds.get(t, t.__name__)


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def resolve(cls: type, *layers: Mapping[str, Any]) -> Any:
    """An instance of settings class `cls` from `layers` (lowest first; keys that are no setting of `cls`,
    and None values, are passed over), range-checked."""
    names = {d.name for d in declared(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k in names and v is not None})
    obj = cls(**merged)
    check_settings(obj)
    return obj


# ----------------------------------------------------------------------------- config files


@dataclass(frozen=True)
class Table:
    """What one table of a config file may hold: the settings of `classes` but `skip`, and the `extra` string keys."""

    classes: tuple[type, ...]
    skip: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def known(self) -> dict[str, Declared]:
        return {d.name: d for cls in self.classes for d in declared(cls) if d.name not in self.skip}


def read_config(path: str | Path, schema: Mapping[str, Table]) -> dict[str, dict[str, Any]]:
    """A TOML config file as {table key: settings} ("" is the top level), each value type-checked.

    An unreadable file, an unknown table or key, or a value of the wrong type is one
    line naming the file, the key and what is allowed; range checks come once the
    command's flags are merged in (`check_settings`).
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = _toml().load(fh)
    except OSError as e:
        raise InputError(f"cannot read the config file ({e.strerror or e})", path=p) from None
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise InputError(f"not a valid TOML file ({e})", path=p) from None
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {"": top} if "" in schema else {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in schema or key == "":
                allowed = ", ".join(f"[{k}]" for k in schema if k) or "none"
                raise InputError(f"[{key}]: unknown table", path=p, hint=f"tables allowed here: {allowed}")
            tables[key] = value
    if top and "" not in schema:
        raise InputError(f"{next(iter(top))}: a setting outside a table", path=p,
                         hint=f"put it under one of {', '.join(f'[{k}]' for k in schema)}")
    return {k: from_table(schema[k], t, where="" if not k else f"[{k}] ", path=p) for k, t in tables.items()}


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the tomli dependency
        import tomli as tomllib
    return tomllib


def from_table(table_spec: Table, table: Mapping[str, Any], *, where: str, path: str | Path) -> dict[str, Any]:
    """The settings that one config table gives, type-checked (see `read_config`)."""
    known = table_spec.known()
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in table_spec.extra:
            if not isinstance(value, str):
                raise InputError(f"{where}{key} = {value!r}: must be a string", path=path)
            out[key] = value
            continue
        d = known.get(key)
        if d is None:
            raise InputError(f"{where}{key}: unknown setting", path=path,
                             hint=f"use one of {', '.join(sorted([*known, *table_spec.extra]))}")
        if not _is_type(value, d.type):
            raise InputError(f"{where}{key} = {value!r}: must be {_kind(d.type)}", path=path)
        out[key] = _convert(d.type, value)
    return out


def _convert(t: type, value: Any) -> Any:
    """A config file's or a flag's value as the setting's type (an int for a float, a list for a tuple)."""
    if t is float:
        return float(value)
    if t is Path:
        return str(value)
    if t is tuple:
        return tuple(float(x) for x in value)
    return value


def parse_numbers(text: str) -> tuple[float, ...] | None:
    """A flag's 'R,G,B' as numbers; None when they are not numbers."""
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        return None


def to_table(obj: Any) -> dict[str, Any]:
    """The settings of `obj` as a config-file table (None left out: a missing key means None's meaning)."""
    if not is_dataclass(obj):
        raise TypeError(f"{obj!r} is not a settings dataclass")
    table: dict[str, Any] = {}
    for d in declared(type(obj)):
        value = getattr(obj, d.name)
        if value is not None:
            table[d.name] = str(value) if isinstance(value,
                                                     Path) else list(value) if isinstance(value, tuple) else value
    return table


def dump_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Config tables ({"": top level, "filter": {...}, ...}) as a TOML file that `read_config` reads back."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in tables.get("", {}).items()]
    for key, table in tables.items():
        if key:
            lines += ["", f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v} has no place in a config file")
        return repr(v)
    return json.dumps(str(v))


# ----------------------------------------------------------------------------- recorded settings


def recorded_settings(path: str | Path) -> dict[str, dict[str, Any]]:
    """The config tables that repeat the run that wrote `path`: a filter, classifier or extracted
    feature file (its provenance), or a fit-cascade run folder (its report.json, else its progress.json)."""
    p = Path(path)
    if p.is_dir():
        return _run_folder_settings(p)
    from dlsa_cli.io.files import read_safetensors_header

    if p.suffix != ".safetensors":
        raise InputError("records no settings: --config reads a filter, classifier or extracted feature file, or a "
                         "fit-cascade folder", path=p)
    prov = read_safetensors_header(p)[3] or {}
    if "settings" in prov:
        return {k: dict(v) for k, v in prov["settings"].items()}
    return _from_options(p, str(prov.get("command", "")), prov.get("options") or {})


def _from_options(p: Path, command: str, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A file written before provenance recorded `settings`: its settings from its recorded options."""
    if command.endswith("fit-filter"):
        from dlsa_cli.flow.config import FilterConfig, FilterRun

        classes: tuple[type, ...] = (FilterConfig, FilterRun)
    elif command.endswith("fit-classifier"):
        from dlsa_cli.classify.config import TrainConfig

        classes = (TrainConfig,)
    else:
        raise InputError(f"was written by {command or 'no dlsa command'}, which records no settings", path=p)
    names = {d.name for cls in classes for d in declared(cls)}
    return {"": {k: v for k, v in options.items() if k in names and v is not None}}


def _run_folder_settings(folder: Path) -> dict[str, dict[str, Any]]:
    from dlsa_cli.io.files import load_json_text

    if (folder / "compare.json").is_file():
        try:
            cmp = folder / "compare.json"
            return _compare_settings(load_json_text(cmp.read_text(), where=cmp))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"not a readable compare.json ({e})", path=folder / "compare.json") from None
    for name in ("report.json", "progress.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = load_json_text(f.read_text(), where=f)
        except (OSError, ValueError) as e:
            raise InputError(f"unreadable ({e})", path=f) from None
        if "settings" in data and name == "report.json":
            return {k: dict(v) for k, v in data["settings"].items()}
        plan = data.get("plan") or (data.get("settings") or {}).get("plan")
        if plan is not None:
            from dlsa_cli.cascade.plan import plan_from_dict

            return plan_from_dict(plan).to_tables()
    raise InputError("holds no compare.json, nor a fit-cascade run's report.json or progress.json", path=folder,
                     hint="pass a compare or fit-cascade folder, a filter or a classifier file")


def _compare_settings(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The tables that repeat a `dlsa compare` run from its compare.json (the seeds, the ceiling, the protocols)."""
    from dlsa_cli.cascade.plan import plan_from_dict

    tables = plan_from_dict(report["settings"]["plan"]).to_tables()
    own = {k: v for k, v in tables[""].items() if k != "seed"}  # compare's seeds take the plan's seed
    top = {"seeds": ",".join(map(str, report["seeds"])), **report["settings"]["compare"],
           "ceiling": report.get("ceiling") is not None}
    if report.get("protocols"):
        top["select_on"] = "both"
    return {**tables, "": {**top, **own}}
