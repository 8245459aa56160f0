"""Settings declared once: every command's options, checks, config files and errors come from the declarations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer.main
from conftest import invoke

from dlsa_cli.cascade.config import PredictConfig
from dlsa_cli.cli.cascade import FIT_CASCADE
from dlsa_cli.cli.classify import TrainConfig
from dlsa_cli.cli.common import app
from dlsa_cli.cli.compare import COMPARE
from dlsa_cli.cli.derive import Section, flag_map
from dlsa_cli.cli.filter import FIT_FILTER
from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.config import EvaluateConfig
from dlsa_cli.extract.config import ExtractConfig
from dlsa_cli.flow.config import SplitConfig
from dlsa_cli.settings import Declared, Table, declared, dump_toml, read_config

COMMANDS: dict[str, tuple[Section, ...]] = {
    "fit-filter": FIT_FILTER,
    "fit-classifier": (Section("", TrainConfig),),
    "fit-cascade": FIT_CASCADE,
    "split": (Section("", SplitConfig),),
    "predict": (Section("", PredictConfig),),
    "evaluate": (Section("", EvaluateConfig),),
    "extract": (Section("", ExtractConfig),),
    "compare": COMPARE,
}
# Each command's arguments before its options (a real file where it takes one; nothing is read before the check).
ARGS = {"split": 2, "predict": 2, "evaluate": 1}


def _click(name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def _options(name: str) -> dict[str, object]:
    return {p.name: p for p in _click(name).params}


def _cases():
    for command, sections in COMMANDS.items():
        for s in sections:
            for d in s.settings():
                yield pytest.param(command, s, d, id=f"{command}:{s.key or 'top'}.{d.name}")


@pytest.mark.parametrize("command,section,setting", list(_cases()))
def test_each_setting_has_one_flag_with_the_declared_help_and_default(command, section, setting: Declared):
    opts = _options(command)
    opt = opts[section.param(setting.name)]
    flag = section.flag(setting.name, setting.spec.flag)
    assert opt.opts[0] == flag
    holders = [p for p in opts.values() if flag in (*p.opts, *p.secondary_opts)]
    assert holders == [opt], f"{flag} is taken by {[p.name for p in holders]}"
    first_words = setting.spec.help.split("`")[0]
    assert first_words in opt.help
    if setting.default is not None and not isinstance(setting.default, bool) and setting.spec.shown is None:
        shown = f"{setting.default:g}" if isinstance(setting.default, float) else str(setting.default)
        assert opt.show_default == shown
    assert opt.default is None  # not given: the config file's value, else the declaration's default


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_with_settings_declares_them_and_takes_a_config_file(command):
    """The commands' option lists hold exactly the declared settings, plus their own paths and switches."""
    declared_params = {s.param(d.name) for s in COMMANDS[command] for d in s.settings()}
    declared_params |= {s.param(k) for s in COMMANDS[command] for k in s.extra}
    params = {p.name for p in _click(command).params}
    assert declared_params <= params
    assert "config_file" in params
    own = params - declared_params
    plain = {"out", "config_file", "device", "json_out", "quiet", "help", "resume", "checkpoint_every", "val", "init",
             "from_scratch", "filter_path", "val_weights_from", "root", "train", "labels", "plot", "predictions",
             "features", "model", "images", "test"}
    assert own <= plain, f"{command} has options not declared as settings: {sorted(own - plain)}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_name_is_unique_in_a_command(command):
    names = [n for p in _click(command).params for n in (*p.opts, *p.secondary_opts)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def _bad_value(d: Declared) -> str | None:
    """A value of the right type that the declaration refuses (None: every value of the type is allowed)."""
    if d.spec.choices is not None:
        return "zzz"
    if d.spec.rule is None:
        return None
    if d.type is tuple:
        return "1,2"  # R,G,B wants three numbers
    if d.type is str:
        return next(c for c in ("zzz", "-1", "1,,x") if not d.spec.rule.ok(c))
    candidates = [-1.0, 0.0, math.nan, 2.0**70] if d.type is float else [-1, 0, 2**70]
    for c in candidates:
        if not d.spec.rule.ok(c):
            return "nan" if isinstance(c, float) and math.isnan(c) else str(c)
    raise AssertionError(f"no refused value found for {d.name}")


def _bad_cases():
    for command, sections in COMMANDS.items():
        for s in sections:
            for d in s.settings():
                bad = _bad_value(d)
                if bad is not None:
                    yield pytest.param(command, s, d, bad, id=f"{command}:{s.key or 'top'}.{d.name}={bad}")


@pytest.mark.parametrize("command,section,setting,bad", list(_bad_cases()))
def test_a_bad_value_of_every_setting_is_one_line_naming_the_commands_flag(command, section, setting, bad, digits, tmp_path):
    flag = section.flag(setting.name, setting.spec.flag)
    out = tmp_path / {"fit-cascade": "run", "split": "split", "predict": "p.parquet", "compare": "cmp"}.get(
        command, "out.safetensors")
    args = [digits / "train.safetensors"] * ARGS.get(command, 1) + ([] if command == "evaluate" else ["-o", out])
    if command == "compare":
        args += ["--test", digits / "test.safetensors"]
    r = invoke(command, *args, flag, bad)
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {flag} "), lines[0]
    assert not out.exists()


def test_fit_cascade_filter_and_classifier_flags_name_their_own_setting(digits, tmp_path):
    """--filter-batch-size and --filter-lr are the filter's; --batch-size and --lr the classifier's."""
    flags = flag_map(FIT_CASCADE)
    assert flags["FilterConfig.batch_size"] == "--filter-batch-size"
    assert flags["FilterConfig.lr"] == "--filter-lr"
    assert flags["TrainConfig.lr"] == "--lr"
    assert flags["CascadePlan.branch.lr"] == "--branch-lr"
    assert flags["CascadePlan.branch.epochs"] == "--epochs"
    out = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, "--depth", "1", "--filter-epochs", "1",
               "--filter-batch-size", "100000", "--epochs", "1", "--quiet")
    assert r.returncode == 1
    assert "pass a smaller --filter-batch-size" in r.stderr, r.stderr


def test_old_fit_cascade_spellings_stay_as_aliases():
    opts = _options("fit-cascade")
    names = {n for p in opts.values() for n in p.opts}
    for old in ("--clusters", "-k", "--share", "--routing", "--neighbours", "--preset", "--filter-epochs",
                "--filter-select", "--depth", "--seed", "--device", "--branch-lr", "--baseline-init", "--from-scratch"):
        assert old in names, old


def test_config_file_refusals_name_file_key_and_what_is_allowed(tmp_path):
    schema = {"": Table((TrainConfig,)), "filter": Table((TrainConfig,))}
    cases = {
        "epochz = 3\n": "epochz: unknown setting (use one of",
        "epochs = 'x'\n": "epochs = 'x': must be an integer",
        "epochs = 2.5\n": "epochs = 2.5: must be an integer",
        "[other]\nepochs = 3\n": "[other]: unknown table",
        "[filter]\nlr = true\n": "[filter] lr = True: must be a number",
        "epochs = \n": "not a valid TOML file",
    }
    for text, needle in cases.items():
        f = tmp_path / "c.toml"
        f.write_text(text)
        with pytest.raises(InputError) as e:
            read_config(f, schema)
        assert str(e.value).startswith(f"{f}: "), str(e.value)
        assert needle in str(e.value), str(e.value)


def test_dump_toml_reads_back_to_the_same_tables(tmp_path):
    tables = {"": {"depth": 2, "from_scratch": False, "baseline_init": 'a "quoted" path'},
              "filter": {"lr": 1e-05, "routing": "knn-tail", "clusters": 7}}
    f = tmp_path / "c.toml"
    f.write_text(dump_toml(tables))
    from dlsa_cli.settings import _toml

    data = _toml().loads(f.read_text())
    assert {"": {k: v for k, v in data.items() if not isinstance(v, dict)}, "filter": data["filter"]} == tables


def test_every_declared_setting_has_help_and_a_default_of_its_type():
    from dlsa_cli.cascade.plan import CascadePlan
    from dlsa_cli.flow.config import FilterConfig, FilterRun
    from dlsa_cli.settings import check_settings

    for cls in (FilterConfig, FilterRun, TrainConfig, CascadePlan):
        check_settings(cls())  # every default is of its type and in its range
        for d in declared(cls):
            assert d.spec.help.strip(), f"{cls.__name__}.{d.name} has no help"


def test_help_of_a_setting_names_the_commands_flags():
    """A declaration's `name` references are written as the flag of the command at hand."""
    opts = _options("fit-cascade")
    assert "--filter-neighbours" in opts["filter__routing"].help
    assert "--lr" in opts["baseline__lr_side"].help and "--filter-lr" not in opts["baseline__lr_side"].help
    assert "--neighbours" in _options("fit-filter")["top__routing"].help


def test_config_then_flags_then_inspect_config_repeat_a_cascade(digits, tmp_path):
    """A recipe's TOML gives the files its flags give; `inspect RUN --config` gives a file that repeats the run."""
    from safetensors.numpy import load_file

    d = digits
    common = (d / "train.safetensors", "--val", d / "val.safetensors", "--quiet")
    flags = ("--depth", "1", "--clusters", "8", "--filter-epochs", "2", "--filter-batch-size", "64", "--epochs", "3",
             "--share", "0.4", "--branch-lr", "0.001")
    r = invoke("fit-cascade", *common, "-o", tmp_path / "flags", *flags)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "recipe.toml"
    cfg.write_text("num_depths = 1\n[filter]\nclusters = 8\nepochs = 2\nbatch_size = 64\nshare = 0.4\n"
                   "[baseline]\nepochs = 3\n[branch]\nlr = 0.001\n")
    r = invoke("fit-cascade", *common, "-o", tmp_path / "config", "--config", cfg)
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.toml"
    r = invoke("inspect", tmp_path / "config", "--config")
    assert r.returncode == 0, r.stderr
    again.write_text(r.stdout)
    r = invoke("fit-cascade", *common, "-o", tmp_path / "again", "--config", again)
    assert r.returncode == 0, r.stderr
    for name in ("baseline", "depth1/filter", "depth1/cluster", "final"):
        ref = load_file(tmp_path / "flags" / f"{name}.safetensors")
        for run in ("config", "again"):
            got = load_file(tmp_path / run / f"{name}.safetensors")
            assert ref.keys() == got.keys()
            assert all((ref[k] == got[k]).all() for k in ref), (run, name)
    import json

    plans = [json.loads((tmp_path / r / "report.json").read_text())["plan"] for r in ("flags", "config", "again")]
    assert plans[0] == plans[1] == plans[2]


def test_flags_override_the_config_file(digits, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("clusters = 8\nepochs = 1\nbatch_size = 64\n")
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, "--config", cfg, "--clusters", "5", "--quiet")
    assert r.returncode == 0, r.stderr
    r = invoke("inspect", out, "--config")
    assert "clusters = 5\n" in r.stdout and "epochs = 1\n" in r.stdout


def test_a_config_file_error_is_one_line_and_writes_nothing(digits, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[filter]\nclusterz = 8\n")
    out = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, "--config", cfg)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {cfg}: [filter] clusterz: unknown setting "
                                             + r.stderr.split("unknown setting ", 1)[1].strip()]
    assert not out.exists()
    assert Path(cfg).read_text() == "[filter]\nclusterz = 8\n"


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("toml", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_every_recipe_config_is_a_valid_fit_cascade_config(toml):
    from dlsa_cli.cascade.plan import plan_from_layers
    from dlsa_cli.cli.derive import _schema

    t = read_config(toml, _schema(FIT_CASCADE))
    plan = plan_from_layers([t.get("", {})], [t.get("filter", {})], baseline_table=t.get("baseline"),
                            branch_table=t.get("branch"))
    assert plan.num_depths >= 1


def test_the_tiny_recipe_config_gives_the_files_of_the_flags_it_replaces(digits, tmp_path):
    """recipes/tinyimagenet_lt.toml against the flags recipes/tinyimagenet_lt.sh passed before it (sizes made small)."""
    from safetensors.numpy import load_file

    small = ("--filter-epochs", "1", "--epochs", "2", "--clusters", "8", "--filter-batch-size", "64", "--hidden", "16")
    common = (digits / "train.safetensors", "--val", digits / "val.safetensors", "--quiet")
    old = ("--depth", "1", "--clusters", "200", "--filter-epochs", "10", "--filter-batch-size", "512", "--hidden", "256",
           "--routing", "knn-tail", "--loss", "bsm", "--epochs", "150", "--memory-k", "50", "--soft-routing")
    r = invoke("fit-cascade", *common, "-o", tmp_path / "flags", *old, *small)
    assert r.returncode == 0, r.stderr
    r = invoke("fit-cascade", *common, "-o", tmp_path / "toml", "--config", RECIPES / "tinyimagenet_lt.toml", *small)
    assert r.returncode == 0, r.stderr
    for name in ("baseline", "depth1/filter", "depth1/cluster", "final"):
        a, b = load_file(tmp_path / "flags" / f"{name}.safetensors"), load_file(tmp_path / "toml" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name
    combine = [json.loads((tmp_path / run / "cascade.json").read_text())["combine"] for run in ("flags", "toml")]
    assert combine[0] == combine[1] and combine[0]["k"] == 50 and len(combine[0]["temperatures"]) == 1
