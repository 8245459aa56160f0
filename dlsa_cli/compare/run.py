"""`compare`: the baselines, the DLSA cascade and its controls on the same features, per seed.

Per seed, every run is fitted on TRAIN, chosen on the selection split (VAL; TEST
only with `select_on="test"`, the authors' protocol) and scored on TEST:

    baseline          the cascade's own baseline classifier (linear Balanced Softmax by default)
    la-loss           the same with the logit-adjusted loss, its strength chosen on the selection split
    posthoc-la/-tau   a plain cross-entropy classifier (fitted once), then post-hoc logit
                      adjustment / tau-normalisation, strength chosen on the selection split
    crt               re-trained from the baseline on class-balanced batches
    lws               the baseline's rows rescaled (learnable weight scaling)
    ncm               nearest class mean (cosine, normalised features)
    dlsa              `fit_cascade` (its baseline is the `baseline` run: fitted once)
    random-routes     the cascade's filters and branches with routes drawn at random,
    posterior-routes  or by the baseline's softmax mass on tail classes, at the cascade's
                      routed shares of each depth
    ensemble          as many classifiers fine-tuned from the baseline as the cascade has
                      branches, without routing, their logits averaged
    tail-bias         the baseline plus w x its standardised softmax tail mass on the tail classes'
                      logits, w chosen on the selection split (the router's signal as a one-line bias)
    memory-vote       the baseline plus w x log of the class-balanced vote of its k nearest training
                      samples (`classify/memory.py`), w chosen on the selection split

OUTDIR/progress.json records every finished run of every seed, so an interrupted
compare continues (`resume=True`); OUTDIR/seedS/ holds the cascade, each run's test
predictions (NAME.parquet; the cascade's as dlsa.parquet, with `route` and `label`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.cascade.plan import CascadePlan
from dlsa_cli.compare.config import BASELINES, CONTROLS, OPTIMISTIC, RUNS, CompareConfig
from dlsa_cli.compare.report import CompareReport, build_report
from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.flow.config import ROUTINGS
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.files import file_sha256, write_json
from dlsa_cli.runtime.device import as_device
from dlsa_cli.settings import to_table

__all__ = ["BASELINES", "COMPARE", "CONTROLS", "LA_TAUS", "PROGRESS", "RUNS", "balanced", "choose_posthoc", "compare"]

LA_TAUS = (0.5, 1.0, 1.5, 2.0)  # the logit-adjusted loss's strengths tried (Menon et al.: 1)
PROGRESS = "progress.json"
COMPARE = "compare.json"

EventFn = Callable[[str], None]


@dataclass
class _Inputs:
    """The three feature files, read once; `sel` is the split every choice is made on."""

    train: FeatureSet
    val: FeatureSet
    test: FeatureSet
    sel: FeatureSet
    counts: np.ndarray  # (C,) training counts
    paths: dict[str, Path]

    @property
    def sel_path(self) -> Path:
        return self.paths["test" if self.sel is self.test else "val"]


@dataclass
class _Ctx:
    out: Path
    config: CompareConfig
    plan: CascadePlan
    data: _Inputs
    device: Any
    event: EventFn
    progress: dict[str, Any]

    def save(self) -> None:
        write_json(self.out / PROGRESS, self.progress)


@dataclass
class _Preds:
    """A run's predictions (N,) on TEST and on the selection split; routes ("cluster@d" / "regular") when routed."""

    test: np.ndarray
    sel: np.ndarray
    test_route: np.ndarray | None = None
    sel_route: np.ndarray | None = None


def compare(train: str | Path, val: str | Path | None, test: str | Path, out_dir: str | Path,
            config: CompareConfig | None = None, plan: CascadePlan | None = None, *, device: Any = "cpu",
            resume: bool = False, plot: str | Path | None = None, on_event: EventFn | None = None) -> CompareReport:
    """Every run of `RUNS` for every seed of `config.seeds`; writes OUTDIR/compare.json and returns its report.

    `plan`: the cascade's settings (its `seed` is each seed in turn); the baselines take its
    `baseline` classifier settings, the controls its branch settings. `plot`: a PNG of the
    separation ceiling (needs `config.ceiling`).
    """
    config = config or CompareConfig()
    plan = plan or CascadePlan()
    config.check()
    if config.select_on == "both":
        return _both_protocols(train, val, test, Path(out_dir), config, plan, device=device, resume=resume, plot=plot,
                               on_event=on_event)
    seeds = config.seed_list()
    plan.check()
    if plot is not None:
        _check_plot(plot, config, Path(out_dir))
    data = _read_inputs(train, val, test, config)
    out = _check_out(Path(out_dir), data, resume)
    ctx = _Ctx(out, config, plan, data, as_device(device), on_event or (lambda _m: None), {})
    ctx.progress = _start(ctx, resume)
    for seed in seeds:
        _run_seed(ctx, seed)
    ceiling = _ceiling(ctx, seeds[0]) if config.ceiling else None
    report = build_report(ctx.progress["runs"], seeds, config, out, _correct(ctx, seeds), ceiling,
                          settings=ctx.progress["settings"])
    write_json(out / COMPARE, report.to_json())
    if plot is not None and ceiling is not None:
        from dlsa_cli.compare.report import plot_ceiling

        plot_ceiling(plot, ceiling, optimistic=config.optimistic)
    return report


PROTOCOLS = "select-on-test"  # the sub-folder of --select-on both's test-chosen compare


def _both_protocols(train: str | Path, val: str | Path | None, test: str | Path, out: Path, config: CompareConfig,
                    plan: CascadePlan, **kw: Any) -> CompareReport:
    """The compare chosen on VAL in OUT, the same chosen on TEST (the authors' protocol) in OUT/select-on-test,
    and, in OUT's report, DLSA's gain over its baseline and over the best baseline under each."""
    honest = compare(train, val, test, out, replace(config, select_on="val"), plan, **kw)
    kw["plot"] = None
    optimistic = compare(train, val, test, out / PROTOCOLS, replace(config, select_on="test"), plan, **kw)

    def gains(r: CompareReport) -> dict[str, Any]:
        return {"selected_on": r.selected_on, "best_baseline": r.best_baseline,
                "dlsa_minus_baseline": r.differences["baseline"]["overall"]["mean"],
                "dlsa_minus_best": r.differences[r.best_baseline]["overall"]["mean"]}

    val_g, test_g = gains(honest), gains(optimistic)
    honest.protocols = {"val": val_g, "test": {**test_g, "note": OPTIMISTIC}, "folder": str(out / PROTOCOLS),
                        "inflation": test_g["dlsa_minus_baseline"] - val_g["dlsa_minus_baseline"]}
    write_json(out / COMPARE, honest.to_json())
    return honest


def _check_plot(plot: str | Path, config: CompareConfig, out: Path) -> None:
    """The plot's name and matplotlib, before any work; a plot inside OUT (made by the run) is checked beside OUT."""
    from dlsa_cli.evaluation.plot import check_plot_target

    if not config.ceiling:
        raise InputError("--plot draws the separation ceiling", hint="add CompareConfig.ceiling")
    p = Path(plot)
    check_plot_target(out.parent / p.name if p.parent.resolve() == out.resolve() else p)


# ----------------------------------------------------------------------------- inputs and the run folder


def _read_inputs(train: str | Path, val: str | Path | None, test: str | Path, config: CompareConfig) -> _Inputs:
    """TRAIN, VAL and TEST, labelled and of one width, with TRAIN's class count and counts in every one's metadata."""
    from dlsa_cli.io.features import num_classes, read_features, train_counts

    if val is None:
        raise InputError("compare needs --val: every epoch, strength and the best baseline are chosen on it",
                         hint="pass --val VAL, a labelled validation file")
    tr = read_features(train, require_labels=True)
    va = read_features(val, require_labels=True)
    te = read_features(test)
    if te.labels is None:
        raise InputError("has no labels: compare scores every run on TEST", path=test,
                         hint="give a labelled test file")
    c, counts = num_classes(tr), train_counts(tr)
    for fs in (va, te):
        if fs.dim != tr.dim:
            raise ModelMismatchError(f"features have D={fs.dim}, the training file D={tr.dim}", path=fs.path)
        y = fs.require_labels()
        if y.size and int(y.max()) >= c:
            raise InputError(f"label {int(y.max())} is out of range for TRAIN's {c} classes", path=fs.path)
    for fs in (tr, va, te):
        fs.meta.update(num_classes=c, train_counts=counts.tolist())
    paths = {"train": Path(train), "val": Path(val), "test": Path(test)}
    return _Inputs(tr, va, te, te if config.optimistic else va, counts, paths)


def _check_out(out: Path, data: _Inputs, resume: bool) -> Path:
    from dlsa_cli.io.files import check_output_dir

    check_output_dir(out, writes=(COMPARE, PROGRESS), inputs=list(data.paths.values()), whole=True)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InputError("output folder is not empty", path=out,
                         hint="pass --resume to continue its compare, or pick another -o")
    return out


def _settings(ctx: _Ctx) -> dict[str, Any]:
    """What a resumed compare must share with the one it continues (the seeds may differ: runs are per seed)."""
    own = {k: v for k, v in to_table(ctx.config).items() if k not in ("seeds", "ceiling", "resamples")}
    plan = {k: v for k, v in ctx.plan.to_dict().items() if k != "seed"}
    return {"compare": own, "plan": plan, "selected_on": ctx.config.select_on,
            "note": OPTIMISTIC if ctx.config.optimistic else None,
            **{f"{k}_sha256": file_sha256(p) for k, p in ctx.data.paths.items()}}


def _fill_new_settings(old: dict[str, Any]) -> None:
    """A compare recorded before a setting existed ran with its default: fill those in before comparing."""
    from dlsa_cli.cascade.plan import with_defaults

    if isinstance(old.get("compare"), dict):
        now = {k: v for k, v in to_table(CompareConfig()).items() if k not in ("seeds", "ceiling", "resamples")}
        old["compare"] = {**now, **old["compare"]}
    if isinstance(old.get("plan"), dict):
        old["plan"] = {k: v for k, v in with_defaults(old["plan"]).items() if k != "seed"}


def _start(ctx: _Ctx, resume: bool) -> dict[str, Any]:
    import json

    settings = _settings(ctx)
    p = ctx.out / PROGRESS
    if resume and p.is_file():
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"unreadable ({e})", path=p, hint="pick another -o") from None
        _fill_new_settings(old.get("settings") or {})
        if old.get("settings") != settings:
            raise InputError("was started with other settings or inputs", path=ctx.out,
                             hint="resume with the same options and files, or pick another -o")
        old.setdefault("runs", {})
        return old
    if resume and ctx.out.is_dir() and any(ctx.out.iterdir()):
        raise InputError(f"holds no {PROGRESS}, so it is not a compare to resume", path=ctx.out, hint="pick another -o")
    ctx.out.mkdir(exist_ok=True)
    progress = {"settings": settings, "runs": {}}
    write_json(p, progress)
    return progress


# ----------------------------------------------------------------------------- one seed


class _Seed:
    """One seed's shared stages, each fitted once and only when a run needs it: the cascade (whose
    baseline is the `baseline` run and every other run's start) and the plain cross-entropy classifier."""

    def __init__(self, ctx: _Ctx, seed: int):
        self.ctx, self.seed = ctx, seed
        self.dir = ctx.out / f"seed{seed}"
        self.plan = replace(ctx.plan, seed=seed)

    @functools.cached_property
    def cascade(self) -> Any:
        from dlsa_cli.cascade.fit import fit_cascade

        self.ctx.event(f"seed {self.seed}: the DLSA cascade")
        return fit_cascade(self.ctx.data.paths["train"], self.dir / "cascade", self.plan, val=self.ctx.data.sel_path,
                           device=self.ctx.device, resume=True, on_event=self.ctx.event)

    @property
    def base_path(self) -> Path:
        return self.cascade.out_dir / "baseline.safetensors"

    def baseline(self) -> Any:
        from dlsa_cli.classify.model import Classifier

        return Classifier.load(self.base_path)

    def fit(self, cfg: Any, *, train: FeatureSet | None = None, val: FeatureSet | None = None,
            **kw: Any) -> Any:
        from dlsa_cli.classify.train import fit_classifier
        from dlsa_cli.runtime.device import seed_everything

        seed_everything(cfg.seed)
        d = self.ctx.data
        return fit_classifier(d.train if train is None else train, d.sel if val is None else val, cfg,
                              device=self.ctx.device, **kw)[0]

    def plain_ce(self) -> Any:
        """The cross-entropy classifier the post-hoc runs adjust, fitted once (seedS/ce.safetensors)."""
        from dlsa_cli.classify.model import Classifier

        path = self.dir / "ce.safetensors"
        if path.is_file():
            return Classifier.load(path)
        clf = self.fit(replace(self.plan.baseline_config(), loss="ce", posthoc="none"))
        clf.save(path)
        return clf


def _run_seed(ctx: _Ctx, seed: int) -> None:
    done = ctx.progress["runs"].setdefault(str(seed), {})
    s = _Seed(ctx, seed)
    s.dir.mkdir(exist_ok=True)
    for name in ("dlsa", *BASELINES, *CONTROLS):  # the cascade first: its baseline starts the others
        if name in done and (s.dir / f"{name}.parquet").is_file():
            ctx.event(f"seed {seed}: {name} finished in an earlier run, reused")
            continue
        ctx.event(f"seed {seed}: {name}")
        preds = RUN_FNS[name](s)
        if name != "dlsa":
            _write_predictions(ctx, s.dir / f"{name}.parquet", name, preds)
        done[name] = _metrics(ctx, preds)
        ctx.save()


def _scores(clf: Any, fs: FeatureSet, *, posthoc: bool = True) -> np.ndarray:
    return clf.logits(fs.features, posthoc=posthoc)  # (N, C)


def _plain(s: _Seed, clf: Any) -> _Preds:
    d = s.ctx.data
    return _Preds(_scores(clf, d.test).argmax(1), _scores(clf, d.sel).argmax(1))


def _run_baseline(s: _Seed) -> _Preds:
    return _plain(s, s.baseline())


def _run_la_loss(s: _Seed) -> _Preds:
    """The logit-adjusted loss, its strength chosen on the selection split from LA_TAUS (the first best among
    ties); at strength 1 it is Balanced Softmax, so a Balanced Softmax baseline is reused there."""
    base = s.plan.baseline_config()
    best, best_score = None, -1.0
    for tau in LA_TAUS:
        reuse = tau == 1.0 and base.loss == "bsm" and base.posthoc == "none"
        clf = s.baseline() if reuse else s.fit(replace(base, loss="la", la_tau=tau, posthoc="none"))
        score = balanced(s.ctx.data.sel.require_labels(), _scores(clf, s.ctx.data.sel).argmax(1))
        if score > best_score:
            best, best_score = clf, score
    return _plain(s, best)


def _run_posthoc(kind: str) -> Callable[[_Seed], _Preds]:
    def run(s: _Seed) -> _Preds:
        clf = s.plain_ce()
        choose_posthoc(clf, s.ctx.data.sel, kind)
        return _plain(s, clf)

    return run


def choose_posthoc(clf: Any, sel: FeatureSet, kind: str) -> float:
    """Set `clf`'s post-hoc `kind` ("la" or "tau") to the grid strength with the best balanced accuracy on `sel`
    (the first, weakest, among ties, as `fit_classifier` chooses); returns it."""
    from dlsa_cli.classify.config import LA_GRID, TAU_GRID

    grid = LA_GRID if kind == "la" else TAU_GRID
    scores = []
    for tau in grid:
        clf.meta["posthoc"] = {"kind": kind, "tau": float(tau)}
        scores.append(balanced(sel.require_labels(), _scores(clf, sel).argmax(1)))
    best = float(grid[int(np.argmax(scores))])
    clf.meta["posthoc"] = {"kind": kind, "tau": best, "grid": list(grid), "val_balanced": scores}
    return best


def balanced(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class accuracy over the classes present in `labels`."""
    from dlsa_cli.evaluation.metrics import per_class_accuracy

    acc = per_class_accuracy(labels, pred, int(max(labels.max(), pred.max())) + 1)[0]
    return float(np.nanmean(acc))


def _run_crt(s: _Seed) -> _Preds:
    return _plain(s, s.fit(replace(s.plan.baseline_config(), sampler="balanced", posthoc="none"), init=s.base_path))


def _run_lws(s: _Seed) -> _Preds:
    cfg = replace(s.plan.baseline_config(), model="lws", sampler="balanced", loss="ce", posthoc="none")
    return _plain(s, s.fit(cfg, init=s.base_path))


def _run_ncm(s: _Seed) -> _Preds:
    from dlsa_cli.classify.config import TrainConfig

    base = s.plan.baseline_config()
    return _plain(s, s.fit(TrainConfig(model="ncm", seed=s.seed, cosine_scale=base.cosine_scale)))


def _route_names(depth: np.ndarray) -> np.ndarray:
    return np.where(depth > 0, np.char.add("cluster@", depth.astype(str)), "regular").astype(str)


def _cascade_preds(model: Any, s: _Seed) -> _Preds:
    d, dev = s.ctx.data, s.ctx.device
    (zt, rt), (zs, rs) = (model.logits(fs.features, device=dev) for fs in (d.test, d.sel))
    return _Preds(zt.argmax(1), zs.argmax(1), _route_names(rt), _route_names(rs))


def _run_dlsa(s: _Seed) -> _Preds:
    """The cascade, its test predictions written by `predict` as seedS/dlsa.parquet."""
    from dlsa_cli.cascade.stage import predict_path
    from dlsa_cli.evaluation.report import read_predictions

    run = s.cascade
    out = s.dir / "dlsa.parquet"
    predict_path(run.out_dir, s.ctx.data.paths["test"], out, device=s.ctx.device)
    if s.ctx.config.optimistic:
        _label_optimistic(out)
    table = read_predictions(out)
    sel = _cascade_preds(run.cascade, s)
    return _Preds(table.predictions, sel.sel, table.routes, sel.sel_route)


def _label_optimistic(path: Path) -> None:
    """Add the note to a predictions table's metadata (rewritten atomically)."""
    from dlsa_cli.io.files import read_table, write_table

    table, kind, meta, prov = read_table(path)
    write_table(path, table, kind=kind or "predictions", meta={**meta, "note": OPTIMISTIC, "selected_on": "test"},
                prov=prov)


# ----------------------------------------------------------------------------- the controls


def _branch_start(s: _Seed) -> dict[str, Any]:
    return {"init": None, "from_scratch": True} if s.plan.from_scratch else {"init": s.base_path}


def _whole_counts(s: _Seed) -> np.ndarray | None:
    d = s.ctx.data
    return np.bincount(d.sel.require_labels(), minlength=len(d.counts)) if s.plan.val_weights else None


def _routed_control(score: Callable[[_Seed], Callable[[np.ndarray], np.ndarray]]) -> Callable[[_Seed], _Preds]:
    """The cascade with each depth's route decided by `score(s)`, routing the share of the remaining
    training samples that the cascade's own filter routed there; its branches refitted on those routes."""

    def run(s: _Seed) -> _Preds:
        from dlsa_cli.cascade.model import Cascade
        from dlsa_cli.compare.controls import RoutedBy
        from dlsa_cli.flow.routing import quantile_threshold

        d, casc = s.ctx.data, s.cascade
        fn, cfg = score(s), s.plan.branch_config()
        left_tr, left_va = np.arange(d.train.n), np.arange(d.sel.n)
        filters, branches = [], []
        for i, (flt, rep) in enumerate(zip(casc.cascade.filters, casc.report.depths, strict=True), start=1):
            s_tr, s_va = fn(d.train.features[left_tr]), fn(d.sel.features[left_va])
            thr = quantile_threshold(s_tr, rep.train.routed / rep.train.samples)
            r_tr, r_va = s_tr >= thr, s_va >= thr
            branches.append(_fit_branch(s, cfg, left_tr[r_tr], left_va[r_va], flt=flt,
                                        filter_path=casc.out_dir / f"depth{i}" / "filter.safetensors"))
            filters.append(RoutedBy(flt, fn, thr))
            left_tr, left_va = left_tr[~r_tr], left_va[~r_va]
        final = _fit_branch(s, cfg, left_tr, left_va)
        return _cascade_preds(Cascade(casc.cascade.spec, filters, branches, final), s)

    return run


def _fit_branch(s: _Seed, cfg: Any, train_rows: np.ndarray, val_rows: np.ndarray, **kw: Any) -> Any:
    """A branch on its training rows, validated on its rows of the selection split (carved when it has none)."""
    d = s.ctx.data
    val = d.sel.subset(val_rows) if len(val_rows) else None
    counts = _whole_counts(s) if val is not None else None
    from dlsa_cli.classify.train import fit_classifier
    from dlsa_cli.runtime.device import seed_everything

    seed_everything(cfg.seed)
    return fit_classifier(d.train.subset(train_rows), val, cfg, device=s.ctx.device, val_class_counts=counts,
                          **_branch_start(s), **kw)[0]


def _random_score(s: _Seed) -> Callable[[np.ndarray], np.ndarray]:
    from dlsa_cli.compare.controls import random_score

    return functools.partial(random_score, seed=s.seed)


def _posterior_score(s: _Seed) -> Callable[[np.ndarray], np.ndarray]:
    from dlsa_cli.evaluation.metrics import tail_classes, tail_mass

    base = s.baseline()
    is_tail = tail_classes(s.ctx.data.counts, s.ctx.config.tail_at_most)
    return lambda x: tail_mass(base.logits(x, posthoc=False), is_tail)


def _run_ensemble(s: _Seed) -> _Preds:
    """One fine-tuned classifier per branch of the cascade, on all of TRAIN, their logits averaged."""
    d = s.ctx.data
    cfg = s.plan.branch_config()
    k = s.plan.num_depths + 1
    sub = np.random.SeedSequence([s.seed, 1]).generate_state(k)  # a seed of its own for each member
    clfs = [s.fit(replace(cfg, seed=int(sub[i])), val_class_counts=None, **_branch_start(s)) for i in range(k)]

    def mean_logits(fs: FeatureSet) -> np.ndarray:
        return np.mean([_scores(c, fs) for c in clfs], axis=0)

    return _Preds(mean_logits(d.test).argmax(1), mean_logits(d.sel).argmax(1))


def _run_tail_bias(s: _Seed) -> _Preds:
    """Control (a): the baseline's tail mass as a post-hoc bias on the tail classes, its weight chosen on the
    selection split (standardised by the selection split's mean and sd)."""
    from dlsa_cli.classify.memory import choose_weight
    from dlsa_cli.compare.controls import TAIL_BIAS_WEIGHTS, tail_bias
    from dlsa_cli.evaluation.metrics import tail_classes, tail_mass

    d, base = s.ctx.data, s.baseline()
    is_tail = tail_classes(d.counts, s.ctx.config.tail_at_most)
    z_sel, z_test = _scores(base, d.sel), _scores(base, d.test)
    raw_sel, raw_test = (base.logits(fs.features, posthoc=False) for fs in (d.sel, d.test))
    t = tail_mass(raw_sel, is_tail)
    b_sel, b_test = (tail_bias(raw, is_tail, float(t.mean()), float(t.std())) for raw in (raw_sel, raw_test))
    w = choose_weight(z_sel, b_sel, d.sel.require_labels(), grid=TAIL_BIAS_WEIGHTS)[0]
    return _Preds((z_test + w * b_test).argmax(1), (z_sel + w * b_sel).argmax(1))


def _run_memory_vote(s: _Seed) -> _Preds:
    """Control (b): the baseline plus w x log of its k nearest training samples' class-balanced vote."""
    from dlsa_cli.compare.controls import memory_vote

    d, k = s.ctx.data, s.plan.memory_k or s.ctx.config.vote_k
    pred_test, pred_sel, _, _ = memory_vote(s.baseline(), d.train, d.sel, d.test, k, device=s.ctx.device)
    return _Preds(pred_test, pred_sel)


RUN_FNS: dict[str, Callable[[_Seed], _Preds]] = {
    "baseline": _run_baseline,
    "la-loss": _run_la_loss,
    "posthoc-la": _run_posthoc("la"),
    "posthoc-tau": _run_posthoc("tau"),
    "crt": _run_crt,
    "lws": _run_lws,
    "ncm": _run_ncm,
    "dlsa": _run_dlsa,
    "random-routes": _routed_control(_random_score),
    "posterior-routes": _routed_control(_posterior_score),
    "ensemble": _run_ensemble,
    "tail-bias": _run_tail_bias,
    "memory-vote": _run_memory_vote,
}


# ----------------------------------------------------------------------------- scores and files


def _metrics(ctx: _Ctx, p: _Preds) -> dict[str, Any]:
    """TEST metrics of one run (fractions), and its balanced accuracy on the selection split."""
    from dlsa_cli.evaluation.report import evaluate_predictions

    d = ctx.data
    m = evaluate_predictions(d.test.require_labels(), p.test, d.counts, routes=p.test_route,
                             tail_at_most=ctx.config.tail_at_most).to_json()
    out = {k: m[k] for k in ("overall", "many", "medium", "few", "mcc", "nmi")}
    if p.test_route is not None:
        out["separation"] = m["separation"]
        out["routed_share"] = float(np.mean(p.test_route != "regular"))
    out["select_balanced"] = balanced(d.sel.require_labels(), p.sel)
    return out


def _write_predictions(ctx: _Ctx, path: Path, name: str, p: _Preds) -> None:
    """A run's TEST predictions as a predictions table (`dlsa evaluate` reads it)."""
    from dlsa_cli.io.files import write_table

    d = ctx.data
    cols: dict[str, Any] = {} if d.test.ids is None else {"id": d.test.ids}
    cols |= {"label": d.test.require_labels().astype(np.int64), "prediction": np.asarray(p.test, dtype=np.int64)}
    if p.test_route is not None:
        cols["route"] = p.test_route
    meta = {"num_classes": len(d.counts), "train_counts": d.counts.tolist(), "model": f"compare: {name}",
            "selected_on": ctx.config.select_on}
    if ctx.config.optimistic:
        meta["note"] = OPTIMISTIC
    write_table(path, cols, kind="predictions", meta=meta, prov={"command": "compare", "run": name})


def _correct(ctx: _Ctx, seeds: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    """With one seed: each run's per-sample TEST correctness (N,), for the paired bootstrap."""
    if len(seeds) != 1:
        return None
    from dlsa_cli.evaluation.report import read_predictions

    folder = ctx.out / f"seed{seeds[0]}"
    out = {}
    for name in RUNS:
        pr = read_predictions(folder / f"{name}.parquet")
        out[name] = (pr.predictions == pr.labels).astype(np.float64)
    return out


# ----------------------------------------------------------------------------- the ceiling


def _depth1_filter(ctx: _Ctx, s: _Seed, routing: str) -> Any:
    """The cascade's depth-1 filter settings with another routing score, fitted on TRAIN (choices on the
    split every choice is made on)."""
    from dlsa_cli.flow.config import VAL_SELECTS
    from dlsa_cli.flow.train import fit_filter

    cfg = replace(s.plan.filter_config(), routing=routing)
    sel = ctx.data.sel if cfg.select in VAL_SELECTS else None
    router = s.base_path if routing == "posterior" else None
    return fit_filter(ctx.data.train, config=cfg, depth=1, device=ctx.device, val=sel, router=router)


def _ceiling(ctx: _Ctx, seed: int) -> dict[str, Any]:
    """The separation ceiling of the first seed on VAL and TEST (fitted once; recorded in progress.json), with
    the cascade's routing (`dlsa`) and every other routing score's depth-1 filter (`NAME@depth1`) placed on
    each, beside the baseline's own tail signal at the same routed share."""
    if "ceiling" in ctx.progress:
        return ctx.progress["ceiling"]
    from dlsa_cli.compare.ceiling import CeilingReport, ceiling_curve, fit_group_classifiers, place_routing

    d, s = ctx.data, _Seed(ctx, seed)
    ctx.event("the separation ceiling")
    probe = fit_group_classifiers(d.train, d.sel, tail_at_most=ctx.config.tail_at_most,
                                  config=s.plan.baseline_config(), device=ctx.device)
    curves = {name: ceiling_curve(probe, fs, split=name, seed=seed, device=ctx.device)
              for name, fs in (("val", d.val), ("test", d.test))}
    report = CeilingReport(ctx.config.tail_at_most, int((~probe.is_tail).sum()), int(probe.is_tail.sum()),
                           probe.epochs, val=curves["val"], test=curves["test"])
    for name, fs in (("val", d.val), ("test", d.test)):
        _, route = s.cascade.cascade.logits(fs.features, device=ctx.device)
        report.placements[f"dlsa/{name}"] = place_routing(probe, fs, route > 0, curves[name], device=ctx.device)
    for routing in ROUTINGS:
        if routing == s.plan.filter.routing:
            continue  # the cascade's own score: `dlsa` above
        ctx.event(f"the ceiling: a depth-1 filter routing by {routing}")
        flt = _depth1_filter(ctx, s, routing)
        for name, fs in (("val", d.val), ("test", d.test)):
            routed = flt.score(fs.features, device=ctx.device).routed
            report.placements[f"{routing}@depth1/{name}"] = place_routing(probe, fs, routed, curves[name],
                                                                          device=ctx.device)
    ctx.progress["ceiling"] = report.to_json() | {"seed": seed, "selected_on": ctx.config.select_on}
    ctx.save()
    return ctx.progress["ceiling"]
