"""The fit-classifier stage as one function: exactly the file `dlsa fit-classifier` writes.

`fit_classifier_file` reads the inputs, seeds, fits, records the settings and
provenance, and writes the classifier on rank 0; `dlsa fit-classifier` and
`fit_cascade` (for the baseline and every branch) both call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.classify.model import Classifier
from dlsa_cli.classify.train import FitReport, ProgressFn
from dlsa_cli.settings import to_table

__all__ = ["ClassifierFit", "check_classifier_sizes", "classifier_settings", "fit_classifier_file"]


@dataclass
class ClassifierFit:
    """What `fit_classifier_file` returns: the classifier written, its fit report and the seconds it took."""

    classifier: Classifier
    report: FitReport
    seconds: float


def classifier_settings(config: TrainConfig) -> dict[str, Any]:
    """The config-file tables that repeat a fit-classifier run (provenance's `settings`)."""
    return {"": to_table(config)}


def _check_options(config: TrainConfig, *, val: str | Path | None, init: str | Path | None,
                   filter_path: str | Path | None, val_weights: bool, weights_file: bool) -> None:
    """Before any work: an option that would be ignored in this combination is one line naming what it needs."""
    from dlsa_cli.classify.config import flag
    from dlsa_cli.classify.start import is_ride_file
    from dlsa_cli.errors import InputError

    if filter_path is None:
        for name, default in (("side_input", "features"), ("prior_train", "plain")):
            if getattr(config, name) != default:
                raise InputError(f"{flag(name)} {getattr(config, name)} applies to cluster-aided classifiers",
                                 hint=f"add {flag('filter_path')} FILTER or drop it")
    if val_weights and val is None:
        raise InputError(f"{flag('val_class_counts')} needs --val (the part of that file this classifier sees)")
    chooses = config.select == "best" or config.posthoc != "none" or config.model == "ride" or is_ride_file(init)
    if weights_file and not chooses:
        raise InputError(f"{flag('val_class_counts')} weighs the validation samples that choose the epoch, but "
                         f"{flag('select')} last with {flag('posthoc')} none chooses nothing on them",
                         hint=f"use {flag('select')} best or drop it")


def check_classifier_sizes(config: TrainConfig, train: str | Path, device: Any) -> None:
    """Before any work: a classifier that fits in memory (RIDE's experts and their hidden layers)."""
    from dlsa_cli.io.features import feature_info
    from dlsa_cli.runtime.memory import refuse_oversized

    info = feature_info(train)
    names = info.meta.get("class_names")
    d, c = info.dim, max(len(names) if isinstance(names, list) else 0, 2)

    def need(t: TrainConfig) -> float:
        head = (d * t.expert_hidden + t.expert_hidden * c) if t.expert_hidden else d * c
        e = t.experts if t.model == "ride" else 1
        return 16.0 * e * head + 4.0 * 3 * t.batch_size * e * (c + t.expert_hidden)

    refuse_oversized(config, ("experts", "expert_hidden", "batch_size"), need, device=device, what="the classifier")


def fit_classifier_file(
    train: str | Path,
    out: str | Path,
    config: TrainConfig,
    *,
    val: str | Path | None = None,
    init: str | Path | None = None,
    filter_path: str | Path | None = None,
    val_weights_from: str | Path | None = None,
    val_class_counts: np.ndarray | None = None,
    from_scratch: bool = False,
    train_offset: np.ndarray | None = None,
    device: Any = "cpu",
    command: str = "fit-classifier",
    progress: ProgressFn | None = None,
) -> ClassifierFit:
    """Fit a classifier on TRAIN, its epoch chosen on VAL, and write it to OUT on rank 0.

    `val_weights_from` (a file) or `val_class_counts` (its per-class counts): the whole
    validation set VAL was split from, so the epoch maximises its balanced accuracy.
    """
    from dlsa_cli.classify.train import fit_classifier
    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import check_output_file, provenance
    from dlsa_cli.runtime import distributed as dist
    from dlsa_cli.runtime.device import seed_everything

    paths = {"train": train, "val": val, "init": init, "filter": filter_path, "val_weights_from": val_weights_from,
             "m2m_from": config.m2m_from}
    out_p = check_output_file(out, suffixes=(".safetensors",), inputs=list(paths.values()))
    config.check()
    _check_options(config, val=val, init=init, filter_path=filter_path,
                   val_weights=val_weights_from is not None or val_class_counts is not None,
                   weights_file=val_weights_from is not None)
    check_classifier_sizes(config, train, device)
    train_fs = read_features(train, require_labels=True, mmap=True)
    val_fs = read_features(val, require_labels=True, mmap=True) if val is not None else None
    flt = _filter(filter_path, device)
    seed_everything(config.seed)
    t0 = time.perf_counter()
    clf, report = fit_classifier(train_fs, val_fs, config, init=init, flt=flt, filter_path=filter_path,
                                 device=device, val_weights_from=val_weights_from, val_class_counts=val_class_counts,
                                 train_offset=train_offset, from_scratch=from_scratch, progress=progress)
    seconds = time.perf_counter() - t0
    options = {**config.__dict__, "init": init, "filter": filter_path, "val_weights_from": val_weights_from,
               "device": str(device)}
    inputs = [Path(p) for p in paths.values() if p is not None]
    clf.meta["seconds"] = seconds
    prov = provenance(command, options, inputs, config.seed, settings=classifier_settings(config))
    dist.collective(lambda: clf.save(out_p, prov=prov) if dist.is_main() else None)
    return ClassifierFit(clf, report, seconds)


def _filter(filter_path: str | Path | None, device: Any) -> Any:
    if filter_path is None:
        return None
    from dlsa_cli.flow import FlowFilter

    return FlowFilter.load(filter_path, device=device)

