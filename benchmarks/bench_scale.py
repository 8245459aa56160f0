"""Time and peak memory of the heavy stages against N, one process and torchrun's two, side by side.

For each N a synthetic feature file is written (class sizes follow ImageNet-LT's
real training counts from `shared/data/profiles`, scaled to N; Gaussian class
clusters; integer ids), streamed to disk so that making it needs no N x D
array. A filter and a linear classifier are trained once on the first rows.
Then each stage runs as the real CLI in a fresh process (or under
`torchrun --standalone --nproc-per-node P`), and a poller samples every
process of its tree every 20 ms:

- peak RssAnon: anonymous resident memory (heap, tensors), NOT the pages of
  memory-mapped or cached files, per process (the largest process) and summed
  over the tree (torchrun's agent included);
- wall seconds of the whole command, start-up included.

Stages: `split` (the filter's routes; writes the table and both part files),
`fit-filter` and `fit-classifier` (one epoch on all N rows, as `make_models`
trains on its small file; `fit-classifier-val` validates on that small file
instead of carving 5% of the N rows),
`predict` (the classifier's table), `inspect` (the feature file's summary),
`evaluate` (the predict stage's table; list it after predict), `predict-cascade` and
`predict-memory` (a depth-1 cascade fitted on the small file, without and with memory
in its branches: k = 50 nearest of those 20,000 training rows searched for every
predicted batch; what memory costs per sample, and whether memory stays flat in N).

    python benchmarks/bench_scale.py  # CPU: N = 50,000 and 400,000 at D = 256, 1 and 2 processes
    # iNat-2018's shape on GPUs:
    python benchmarks/bench_scale.py --sizes 437513 --dim 2048 --device cuda --procs 1 2 4 8
    bash benchmarks/bench_scale_gpu.sh                        # the prepared GPU run

`--code DIR` runs another checkout's stages on the same files, e.g. the code
before streaming: `git archive ff6a239 dlsa_cli | tar -x -C /tmp/old`, then
`--code /tmp/old --procs 1 --stages split`.

Ratios printed: peak RssAnon at each N over that at the smallest N (the
streaming target is <= 1.5 for split from 50k to 400k), and seconds with P
processes over one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pages import Page, add_markdown_option

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data"))
PROFILE = SHARED / "profiles" / "imagenet_lt_train_counts.json"


def make_file(path: Path, n: int, dim: int, seed: int = 0, chunk: int = 50_000) -> None:
    """A feature file of n rows written chunk by chunk: LT labels (ImageNet-LT profile), class clusters, int ids."""
    import numpy as np

    from dlsa_cli.io.stream import stream_features

    counts = np.asarray(json.loads(PROFILE.read_text()), dtype=np.float64)
    rng = np.random.default_rng(seed)
    y = rng.choice(len(counts), size=n, p=counts / counts.sum())  # (N,) long-tailed
    centers = rng.normal(size=(len(counts), dim)).astype(np.float32)
    with stream_features(path, n, dim, ids="int", meta={"num_classes": len(counts)}) as sink:
        for a in range(0, n, chunk):
            yb = y[a : a + chunk]
            x = centers[yb] + rng.normal(size=(len(yb), dim)).astype(np.float32)
            sink.append(x, yb, np.arange(a, a + len(yb), dtype=np.int64))


def make_models(work: Path, dim: int, device: str) -> tuple[Path, Path]:
    """A filter (K 50, hidden 64, 1 epoch) and a linear classifier (1 epoch) on 20,000 rows."""
    small = work / f"train_small_d{dim}.safetensors"
    flt, clf = work / f"filter_d{dim}.safetensors", work / f"classifier_d{dim}.safetensors"
    if not small.exists():
        make_file(small, 20_000, dim, seed=1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not flt.exists():
        subprocess.run([sys.executable, "-m", "dlsa_cli", "fit-filter", str(small), "-o", str(flt), "-k", "50",
                        "--epochs", "1",
                        "--batch-size", "512", "--hidden", "64", "--max-cluster-share", "1", "--allow-singletons",
                        "--device", device, "--quiet"],
                       check=True, env=env)
    if not clf.exists():
        subprocess.run([sys.executable, "-m", "dlsa_cli", "fit-classifier", str(small), "-o", str(clf), "--epochs", "1",
                        "--device", device, "--quiet"], check=True, env=env)
    return flt, clf


def make_cascades(work: Path, dim: int, device: str) -> None:
    """Depth-1 cascades on make_models' 20,000 rows: with memory (k 50) and the same without it (its
    cascade.json without "combine"), for the predict-cascade and predict-memory stages. They are validated on
    their own training rows (a sample of the profile lacks rare classes, which a baseline refuses), so the
    chosen weights mean nothing here: what is measured is the time and memory of predicting."""
    import shutil

    small = work / f"train_small_d{dim}.safetensors"
    mem, plain = work / f"cascade_memory_d{dim}", work / f"cascade_d{dim}"
    if not (mem / "cascade.json").exists():
        shutil.rmtree(mem, ignore_errors=True)
        fit = ["fit-cascade", str(small), "--val", str(small), "-o", str(mem), "--depth", "1", "-k", "50",
               "--filter-epochs", "1", "--filter-batch-size", "512", "--filter-hidden", "64",
               "--max-cluster-share", "1", "--allow-singletons", "--epochs", "1", "--memory-k", "50",
               "--device", device, "--quiet"]
        subprocess.run([sys.executable, "-m", "dlsa_cli", *fit], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if not (plain / "cascade.json").exists():
        shutil.rmtree(plain, ignore_errors=True)
        shutil.copytree(mem, plain, symlinks=True)
        manifest = json.loads((plain / "cascade.json").read_text())
        manifest.pop("combine", None)
        (plain / "cascade.json").write_text(json.dumps(manifest))
        (plain / "memory.safetensors").unlink()


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> dict[str, float]:
    """Run cmd in cwd (`-m dlsa_cli` imports from there first); wall seconds, peak RssAnon of its largest
    process and of its tree (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"one": 0, "sum": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            vals = [_rss_anon_kb(p) for p in _tree(proc.pid)]
            peak["one"] = max(peak["one"], max(vals, default=0))
            peak["sum"] = max(peak["sum"], sum(vals))
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - t0, "rss_anon_mb": peak["one"] / 1024,
            "rss_anon_sum_mb": peak["sum"] / 1024}


def feature_dim(path: Path) -> int:
    from dlsa_cli.io.features import feature_info

    return feature_info(path).dim


def stage_args(stage: str, data: Path, flt: Path, clf: Path, out: Path, device: str) -> list[str]:
    if stage == "split":
        return ["split", str(flt), str(data), "-o", str(out / "split"), "--device", device, "--quiet"]
    if stage == "predict":
        return ["predict", str(clf), str(data), "-o", str(out / "pred.parquet"), "--device", device, "--quiet"]
    if stage in ("predict-cascade", "predict-memory"):  # make_cascades' folders
        name = "cascade_memory" if stage == "predict-memory" else "cascade"
        cascade = data.parent / f"{name}_d{feature_dim(data)}"
        return ["predict", str(cascade), str(data), "-o", str(out / "pred.parquet"), "--device", device, "--quiet"]
    if stage == "inspect":
        return ["inspect", str(data), "--json"]
    if stage == "fit-filter":  # one epoch of the benchmark's small filter, on all N rows (read memory-mapped)
        return ["fit-filter", str(data), "-o", str(out / "filter.safetensors"), "-k", "50", "--epochs", "1",
                "--batch-size", "512",
                "--hidden", "64", "--max-cluster-share", "1", "--allow-singletons", "--checkpoint-every", "0",
                "--device", device, "--quiet"]
    if stage == "fit-classifier":  # one epoch of a linear classifier on all N rows, validated on 5% carved from them
        return ["fit-classifier", str(data), "-o", str(out / "classifier.safetensors"), "--epochs", "1", "--device",
                device, "--quiet"]
    if stage == "fit-classifier-val":  # the same with a validation file (make_models' 20,000 rows): nothing carved
        small = data.parent / f"train_small_d{feature_dim(data)}.safetensors"
        return ["fit-classifier", str(data), "--val", str(small), "--allow-missing-val-classes", "-o",
                str(out / "classifier.safetensors"), "--epochs", "1",
                "--device", device, "--quiet"]
    if stage == "evaluate":  # the predict stage's one-process table, same N
        return ["evaluate", str(out.parent / out.name.replace("evaluate", "predict") / "pred.parquet"), "--json"]
    raise SystemExit(f"unknown stage {stage}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 400_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", nargs="+", default=["split", "predict", "inspect"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process (equal for every process)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dlsa-bench-scale"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--code", type=Path, default=REPO,
                    help="the checkout whose dlsa_cli runs the stages (e.g. an older commit's `git archive`)")
    add_markdown_option(ap)
    a = ap.parse_args()
    page = Page(ap, a, "Time and memory against N")
    a.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    flt, clf = make_models(a.work, a.dim, a.device)
    if {"predict-cascade", "predict-memory"} & set(a.stages):
        make_cascades(a.work, a.dim, a.device)
    env = dict(os.environ, PYTHONPATH=str(a.code), OMP_NUM_THREADS=str(a.threads))
    rows = []
    for n in a.sizes:
        data = a.work / f"n{n}_d{a.dim}.safetensors"
        if not data.exists():
            make_file(data, n, a.dim)
        for stage in a.stages:
            for p in a.procs:
                out = a.work / f"out_{stage}_{n}_{p}"
                out.mkdir(exist_ok=True)
                args = stage_args(stage, data, flt, clf, out, a.device)
                launch = [sys.executable, "-m", "dlsa_cli"] if p == 1 else \
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={p}", "-m",
                     "dlsa_cli"]
                if stage in ("inspect", "evaluate") and p > 1:
                    continue  # they run in one process
                r = run_measured(launch + args, env, cwd=a.code)
                rows.append({"stage": stage, "n": n, "dim": a.dim, "procs": p, **r})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    page.print(f"Synthetic features with ImageNet-LT's class profile, D = {a.dim}, device {a.device}, "
               f"{a.threads} OMP thread(s) per process; wall seconds of the whole command, peak anonymous RSS of "
               "the largest process and of the process tree; ratios against the smallest N and one process.")
    page.print(_table(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    page.write()


def _table(rows: list[dict]) -> str:
    base_mem = {(r["stage"], r["procs"]): r["rss_anon_mb"] for r in sorted(rows, key=lambda r: -r["n"])}
    one_proc = {(r["stage"], r["n"]): r["seconds"] for r in rows if r["procs"] == 1}
    lines = ["| stage | N | D | procs | seconds | RssAnon MB | tree MB | mem / smallest N | time / 1 proc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem_ratio = r["rss_anon_mb"] / base_mem[(r["stage"], r["procs"])]
        t_ratio = r["seconds"] / one_proc[(r["stage"], r["n"])] if (r["stage"], r["n"]) in one_proc else float("nan")
        lines.append(f"| {r['stage']} | {r['n']} | {r['dim']} | {r['procs']} | {r['seconds']:.1f} | "
                     f"{r['rss_anon_mb']:.0f} | {r['rss_anon_sum_mb']:.0f} | {mem_ratio:.2f} | {t_ratio:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
