"""Head-tail separation at every depth of finished recipe runs, on train, val and test, with accuracy.

    bash recipes/tinyimagenet_lt.sh TRAIN VAL TEST runs/t0 --depth 3
    python benchmarks/separation_per_depth.py runs/t0
    python benchmarks/separation_per_depth.py runs/c_s0/run runs/c_s1/run runs/c_s2/run   # mean ± std over runs

Each RUN is a recipe's OUTDIR (recipes/dlsa.sh: it holds depthD/split.json,
dlsa.parquet and metrics.json; recipes/caltech101_lt.sh puts them in
OUTDIR/run). Per depth and split: the tail share (classes with <= 50 training
samples, by the filter's stored training counts) of the samples routed at
that depth, against the tail share of the samples that reach that depth
(chance), and the routed share of them. Train and val come from the split
reports the cascade wrote; test from the `route` column of the cascade's
predictions on TEST (`cluster@D`). Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlsa_cli.evaluation.metrics import tail_classes  # noqa: E402
from dlsa_cli.io.files import read_safetensors_header, read_table  # noqa: E402

SPLITS = ("train", "val", "test")


def depth_rows(run: Path) -> list[dict[str, tuple[float, float, float]]]:
    """Per depth: split -> (tail share of the routed, tail share of those reaching the depth, routed share)."""
    meta = read_safetensors_header(run / "depth1" / "filter.safetensors")[2]
    tail = tail_classes(np.asarray(meta["train_counts"]))
    table = read_table(run / "dlsa.parquet")[0]
    route = np.asarray(table.column("route").to_pylist())
    is_tail = tail[np.asarray(table.column("label").to_pylist())]
    alive = np.ones(len(route), dtype=bool)
    rows = []
    for d in range(1, 100):
        p = run / f"depth{d}" / "split.json"
        if not p.exists():
            break
        files = json.loads(p.read_text())["files"]
        row = {s: _from_report(files[s]) for s in ("train", "val") if s in files}
        routed = route == f"cluster@{d}"
        row["test"] = (float(is_tail[routed].mean()) if routed.any() else float("nan"),
                       float(is_tail[alive].mean()), float(routed.sum() / max(alive.sum(), 1)))
        alive &= ~routed
        rows.append(row)
    return rows


def _from_report(f: dict) -> tuple[float, float, float]:
    routed = f["tail_share"]["routed"]
    return (float("nan") if routed is None else routed, f["tail_share"]["all"], f["routed_share"])


def accuracy(run: Path) -> dict[str, float]:
    m = json.loads((run / "metrics.json").read_text())
    return {f"{k} {g}": m[k][g] for k in ("baseline", "dlsa") for g in ("overall", "few")}


def ms(v: list[float]) -> str:
    v = [x for x in v if x == x]
    return "n/a" if not v else f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="recipe OUTDIRs (or their run/ folders)")
    args = ap.parse_args()
    runs = [r / "run" if not (r / "depth1").exists() and (r / "run" / "depth1").exists() else r for r in args.runs]
    per_run = [depth_rows(r) for r in runs]
    depths = min(len(rows) for rows in per_run)
    print(f"tail share of the routed samples vs chance [routed share], mean ± std over {len(runs)} run(s)")
    print("| depth | " + " | ".join(SPLITS) + " |\n|---|" + "---|" * len(SPLITS))
    for d in range(depths):
        cells = []
        for s in SPLITS:
            vals = [rows[d][s] for rows in per_run]
            cells.append(f"{ms([v[0] for v in vals])}% vs {100 * np.mean([v[1] for v in vals]):.1f}% "
                         f"[{100 * np.mean([v[2] for v in vals]):.1f}%]")
        print(f"| {d + 1} | " + " | ".join(cells) + " |")
    accs = [accuracy(r) for r in runs]
    for g in ("overall", "few"):
        delta = [a[f"dlsa {g}"] - a[f"baseline {g}"] for a in accs]
        print(f"test {g}: baseline {ms([a[f'baseline {g}'] for a in accs])}, DLSA "
              f"{ms([a[f'dlsa {g}'] for a in accs])}, "
              f"delta {100 * np.mean(delta):+.2f} ± {100 * np.std(delta):.2f}")


if __name__ == "__main__":
    main()
