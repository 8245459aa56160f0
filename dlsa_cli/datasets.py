"""Long-tailed benchmark splits built from real data.

- `caltech101_lt`: Caltech-101-LT from the EfficientNet-Lite0 features in
  `shared/data/caltech101_lite0.npz` (construction in that folder's README):
  15 test images per class, classes ranked by what remains, class at rank r
  keeps `min(available, max(1, int(400 * 0.01 ** (r / 100))))` training
  images (imbalance factor 100). Seed 0 gives the reference 5,494 images.
  A validation split is then carved out of that training part, stratified,
  every class keeping at least one training and one validation sample; it is
  what chooses epochs and hyperparameters (never the test split).
- `digits_lt`: scikit-learn's bundled 8x8 digit photos (1,797 real scans),
  made long-tailed the same way (40 test
  images per class, imbalance 20, top class 140); the README quickstart uses it because it
  needs nothing but the package registries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.features import FeatureSet, read_features

__all__ = ["LTSplits", "caltech101_lt", "digits_lt", "long_tail_splits"]


@dataclass
class LTSplits:
    """train (long-tailed), val (carved from train) and test (balanced) sets."""

    train: FeatureSet
    val: FeatureSet
    test: FeatureSet
    class_names: list[str]


def long_tail_splits(
    fs: FeatureSet,
    *,
    test_per_class: int,
    max_per_class: int,
    imbalance: float,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, val, test) of the standard long-tail construction.

    Per class (in label order) the rows are shuffled with one generator seeded
    `seed`; the first `test_per_class` go to test. Classes are ranked by what
    remains (largest first, ties by label); rank r keeps
    `min(available, max(1, int(max_per_class * (1 / imbalance) ** (r / (C - 1)))))`.
    From each kept set, `max(1, round(val_fraction * kept))` go to val (at
    most kept - 1, so every class keeps a training sample).
    """
    y = fs.require_labels()
    classes = np.unique(y)
    c = len(classes)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.flatnonzero(y == k)) for k in classes]
    avail = np.array([len(p) - test_per_class for p in perms])
    if (avail < 2).any():
        k = int(classes[np.argmin(avail)])
        raise InputError(f"class {k} has too few samples for {test_per_class} test samples plus 2 more", path=fs.path)
    order = np.argsort(-avail, kind="stable")
    keep = np.zeros(c, dtype=np.int64)
    for r, i in enumerate(order):
        keep[i] = min(avail[i], max(1, int(max_per_class * (1.0 / imbalance) ** (r / max(c - 1, 1)))))
    keep = np.maximum(keep, 2)  # one train + one val sample at least
    train, val, test = [], [], []
    for i, p in enumerate(perms):
        test.append(p[:test_per_class])
        kept = p[test_per_class : test_per_class + keep[i]]
        n_val = int(min(max(1, round(val_fraction * len(kept))), len(kept) - 1))
        val.append(kept[:n_val])
        train.append(kept[n_val:])
    return np.concatenate(train), np.concatenate(val), np.concatenate(test)


def caltech101_lt(npz: str | Path, *, seed: int = 0, val_fraction: float = 0.2) -> LTSplits:
    """Caltech-101-LT from `caltech101_lite0.npz` (imbalance 100, top class 400)."""
    fs = read_features(npz, require_labels=True)
    with np.load(npz, allow_pickle=False) as d:
        names = [str(s) for s in d["classes"]] if "classes" in d.files else [str(i) for i in range(101)]
    tr, va, te = long_tail_splits(
        fs, test_per_class=15, max_per_class=400, imbalance=100, val_fraction=val_fraction, seed=seed
    )
    return LTSplits(fs.subset(tr), fs.subset(va), fs.subset(te), names)


def digits_lt(*, seed: int = 0, val_fraction: float = 0.2) -> LTSplits:
    """scikit-learn's 8x8 digits made long-tailed (imbalance 20, top class 140).

    Features are the 64 pixel intensities scaled to [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits data set needs scikit-learn", hint="pip install scikit-learn") from None
    d = load_digits()
    fs = FeatureSet(
        (d.data / 16.0).astype(np.float32),
        d.target.astype(np.int64),
        np.array([f"digits/{i:04d}" for i in range(len(d.target))]),
    )
    tr, va, te = long_tail_splits(
        fs, test_per_class=40, max_per_class=140, imbalance=20, val_fraction=val_fraction, seed=seed
    )
    return LTSplits(fs.subset(tr), fs.subset(va), fs.subset(te), [str(i) for i in range(10)])
