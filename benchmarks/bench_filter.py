"""One flow-filter epoch: this implementation vs a deliberately naive one, side by side.

An epoch is what `fit-filter` does per epoch: N / batch training steps on
class-uniform pairs (weighted likelihood + balance + purity losses, SGD) and
then the cluster evaluation of every training sample (assignment, purity,
good clusters).

- `fast`: `dlsa_cli.flow.fit_filter` itself (pairs as index tensors on
  the device, the mixture as one matrix product, purity from one bincount);
  the time is that of its second epoch as recorded in the history.
- `naive`: written here to mirror the reference design: a torch `Dataset`
  whose `__getitem__` draws one pair in Python, batched by a `DataLoader`
  (num_workers=0: this machine has 2 shared cores), pos and neg through the
  flow separately, the mixture as a (batch, K, D) broadcast, and the
  per-epoch cluster purity from a Python loop over clusters. Same flow (nflows
  MAF), same losses, same optimiser.

Data: synthetic Gaussian class clusters whose class sizes follow ImageNet-LT's
real training counts (`shared/data/profiles`), scaled down to --samples.

Each variant runs in a fresh subprocess so that its peak memory can be read:
on CPU the process's peak resident set (getrusage maxrss; tracemalloc does
not see torch's allocations), on CUDA `torch.cuda.max_memory_allocated`.

    python benchmarks/bench_filter.py                      # CPU target: D=256, N=20,000, K=500, batch 1024
    python benchmarks/bench_filter.py --device cuda --dim 2048 --samples 115846   # the paper's shape on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from pages import Page, add_markdown_option

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data"))
PROFILE = SHARED / "profiles" / "imagenet_lt_train_counts.json"


def make_data(n: int, dim: int, seed: int = 0):
    """Features (N, D) float32 and labels (N,) with ImageNet-LT's class profile scaled to about N."""
    import numpy as np

    counts = np.asarray(json.loads(PROFILE.read_text()), dtype=np.float64)
    scaled = np.maximum(2, np.round(counts * n / counts.sum())).astype(np.int64)
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(scaled)), scaled)
    centers = rng.normal(size=(len(scaled), dim)).astype(np.float32)
    x = centers[y] + rng.normal(size=(len(y), dim)).astype(np.float32)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


# ----------------------------------------------------------------------------- the naive design


def naive_epoch(x, y, *, k: int, batch: int, device, seed: int = 0) -> float:
    """One epoch the reference way; returns its seconds."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from dlsa_cli.flow import BalanceLoss, MixtureFlow, class_weights

    c = int(y.max()) + 1
    counts = np.bincount(y, minlength=c)
    by_class = [np.flatnonzero(y == i).tolist() for i in range(c)]
    classes = [i for i in range(c) if counts[i] > 0]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    class Pairs(Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, _i: int):
            cp = random.choice(classes)
            cn = random.choice(classes)
            while cn == cp:
                cn = random.choice(classes)
            i, j = random.choice(by_class[cp]), random.choice(by_class[cn])
            return xt[i], yt[i], xt[j], yt[j]

    class Plain(Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i: int):
            return xt[i], yt[i]

    def mixture(z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:  # (B, K) through a (B, K, D) tensor
        d = z.shape[1]
        return -0.5 * ((z[:, None, :] - means[None, :, :]) ** 2).sum(-1) - 0.5 * d * math.log(2 * math.pi)

    random.seed(seed)
    flow = MixtureFlow(x.shape[1], k, generator=torch.Generator().manual_seed(seed)).to(device)
    w = class_weights(counts, 2.0).to(device)
    bal = BalanceLoss(k, 0.7, 1.0)
    opt = torch.optim.SGD(flow.parameters(), lr=0.2, momentum=0.0)
    log_k = math.log(k)
    t0 = time.perf_counter()
    flow.train()
    for xp, yp, xn, _yn in DataLoader(Pairs(), batch_size=batch, shuffle=False, num_workers=0, drop_last=True):
        xp, yp, xn = xp.to(device), yp.to(device), xn.to(device)
        zp, ldp = flow(xp)
        zn, _ = flow(xn)
        lp, ln = mixture(zp, flow.means), mixture(zn, flow.means)
        logp = torch.logsumexp(lp, 1) - log_k + ldp
        l_mle = -2.0 * (w[yp] * logp).mean()
        l_pure = 0.02 * (torch.softmax(lp.detach(), 1) * torch.log_softmax(ln, 1)).sum(1).mean()
        loss = l_mle + bal(lp) + l_pure
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError("naive: loss diverged")
    flow.eval()
    assigned, labels = [], []
    with torch.no_grad():
        for xb, yb in DataLoader(Plain(), batch_size=batch, shuffle=False, num_workers=0):
            z, _ = flow(xb.to(device))
            assigned.append(mixture(z, flow.means).argmax(1).cpu())
            labels.append(yb)
    cl, lb = torch.cat(assigned).numpy(), torch.cat(labels).numpy()
    good, largest = 0, 0
    for kk in range(k):  # per-cluster purity in Python
        members = lb[cl == kk]
        if len(members) == 0:
            continue
        largest = max(largest, len(members))
        purity = np.bincount(members).max() / len(members)
        good += int(purity > 0.7 and len(members) > 10)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- one variant in this process


def run_variant(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from dlsa_cli.runtime.device import resolve_device

    dev = resolve_device(args.device)
    x, y = make_data(args.samples, args.dim)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    if args.variant == "fast":
        from dlsa_cli.flow import fit_filter

        f = fit_filter(x, y, clusters=args.clusters, epochs=2, batch_size=args.batch_size, device=dev,
                       max_cluster_share=1.0, allow_singletons=True)
        seconds = f.history[-1]["seconds"]
    else:
        seconds = naive_epoch(x, y, k=args.clusters, batch=args.batch_size, device=dev)
    out = {"variant": args.variant, "seconds": seconds, "device": str(dev), "n": len(y), "dim": args.dim}
    if dev.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        out["device_name"] = torch.cuda.get_device_name(dev)
    else:
        out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["data_mib"] = rss_before
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dim", type=int, default=256, help="feature dimension D")
    ap.add_argument("--samples", type=int, default=20_000, help="training samples N (ImageNet-LT profile scaled to it)")
    ap.add_argument("--clusters", type=int, default=500, help="mixture components K")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads per variant")
    ap.add_argument("--tf32", action="store_true",
                    help="allow TF32 matmuls on CUDA (the reference figure's 1.25 s used TF32)")
    ap.add_argument("--only", choices=["fast", "naive"], help="run one variant only")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant, alternated; the fastest is shown")
    ap.add_argument("--variant", choices=["fast", "naive"], help=argparse.SUPPRESS)
    add_markdown_option(ap)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    variants = [args.only] if args.only else ["fast", "naive"]
    passthrough = []
    skip = False
    for a in sys.argv[1:]:  # forward every option but --only/--repeat to the subprocesses
        if skip:
            skip = False
            continue
        if a in ("--only", "--repeat", "--markdown"):
            skip = True
            continue
        if a.startswith(("--only=", "--repeat=", "--markdown=")):
            continue
        passthrough.append(a)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeat):  # alternate the variants, keep each one's fastest run (the machine is shared)
        for variant in variants:
            cmd = [sys.executable, __file__, "--variant", variant, *passthrough]
            env = dict(os.environ, PYTHONPATH=str(REPO))
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                sys.exit(f"{variant} failed:\n{r.stderr[-2000:]}")
            runs[variant].append(json.loads(r.stdout.strip().splitlines()[-1]))
    rows = []
    for variant in variants:
        best = min(runs[variant], key=lambda r: r["seconds"])
        best["peak_mib"] = max(r["peak_mib"] for r in runs[variant])
        best["all_seconds"] = [r["seconds"] for r in runs[variant]]
        rows.append(best)

    page = Page(ap, args, "One flow-filter epoch")
    page.print(f"Flow-filter epoch (training + cluster evaluation) on "
               f"{rows[0].get('device_name', rows[0]['device'])}: N={rows[0]['n']}, D={args.dim}, K={args.clusters}, "
               f"batch {args.batch_size}, {args.threads} CPU thread(s), best of {args.repeat}.")
    page.print(_table(rows))
    page.write()


def _table(rows: list[dict]) -> str:
    """Seconds per epoch and peak memory of each variant, and naive / fast when both ran."""
    gpu = rows[0]["device"].startswith("cuda")
    mem = "peak GPU MiB" if gpu else "peak RSS MiB"
    lines = [f"| variant | s / epoch | {mem} |" + ("" if gpu else " RSS growth MiB |") + " runs (s) |",
             "|---|---|---|" + ("" if gpu else "---|") + "---|"]
    for r in rows:
        grow = "" if gpu else f" {r['peak_mib'] - r['data_mib']:.0f} |"
        lines.append(f"| {r['variant']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |{grow} "
                     + ", ".join(f"{t:.2f}" for t in r["all_seconds"]) + " |")
    if len(rows) == 2:
        f, n = rows
        grow = "" if gpu else f" {(n['peak_mib'] - n['data_mib']) / (f['peak_mib'] - f['data_mib']):.1f}x |"
        lines.append(f"| ratio (naive / fast) | {n['seconds'] / f['seconds']:.1f}x | "
                     f"{n['peak_mib'] / f['peak_mib']:.1f}x |{grow} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
