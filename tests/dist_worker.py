"""A torchrun worker for tests/test_distributed.py: `torchrun ... dist_worker.py SCENARIO OUT_DIR`.

Each rank writes OUT_DIR/SCENARIO.RANK.json with what it saw; the test reads them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch


def collectives() -> dict:
    from dlsa_cli.runtime import distributed as d

    info, dev = d.setup("cpu")
    n = 11
    lo, hi = d.shard_range(n)
    rows = list(range(lo, hi))
    gathered = d.all_gather_object(rows)
    at_zero = d.gather_object({"rank": info.rank})
    t = torch.tensor([float(info.rank + 1)], requires_grad=True)
    s = d.all_reduce_sum(t * 2)
    s.sum().backward()
    return {
        "rank": info.rank, "world_size": info.world_size, "backend": info.backend, "device": str(dev),
        "range": [lo, hi], "gathered": gathered, "at_zero": at_zero, "broadcast": d.broadcast_object(f"from {info.rank}"),
        "sum": float(s), "grad": float(t.grad), "prov": d.provenance_fields(n), "threads": torch.get_num_threads(),
    }


def error() -> dict:
    from dlsa_cli.errors import DlsaError, InputError
    from dlsa_cli.runtime import distributed as d

    info, _ = d.setup("cpu")

    def step() -> int:
        if info.rank == 1:
            raise InputError("row 7 holds NaN", path="x.safetensors", hint="repair it")
        return 1

    try:
        d.collective(step)
        return {"raised": None}
    except DlsaError as e:
        out = {"raised": str(e), "agreed": getattr(e, "agreed", False), "code": e.exit_code}
    d.collective(lambda: 2)  # the group still works after an agreed error
    return {**out, "after": "ok"}


def _losses(flow, x, idx, w, mean_fn, share_mean):
    """The filter's three losses on pairs idx = (pos, neg) with likelihood weights w (one per pair)."""
    pos, neg = idx
    z, logdet = flow(torch.cat([x[pos], x[neg]]))
    comp = flow.module.component_log_density(z) if hasattr(flow, "module") else flow.component_log_density(z)
    k = comp.shape[1]
    lp, ln = comp[: len(pos)], comp[len(pos) :]
    logp = torch.logsumexp(lp, 1) - math.log(k) + logdet[: len(pos)]
    mle = -2.0 * share_mean(w * logp)
    pure = 0.02 * share_mean((torch.softmax(lp.detach(), 1) * torch.log_softmax(ln, 1)).sum(1))
    p = mean_fn(torch.softmax(lp, 1)) + 1e-7
    bal = (p * p.log()).sum() + math.log(k)
    return mle + pure + bal


def ddp_flow() -> dict:
    """Three SGD steps of the flow's losses: one process on the global batch vs DDP on shares of it."""
    import copy

    from dlsa_cli.flow.losses import class_weights
    from dlsa_cli.flow.model import MixtureFlow
    from dlsa_cli.runtime import ddp
    from dlsa_cli.runtime import distributed as d

    info, dev = d.setup("cpu")
    b, dim = 63, 8  # an odd global batch: unequal shares
    g = torch.Generator().manual_seed(0)
    ref = MixtureFlow(dim, 5, hidden=16, generator=g)
    x = torch.randn(400, dim, generator=torch.Generator().manual_seed(1))
    flow = ddp.wrap(ddp.sync_flow_batchnorm(copy.deepcopy(ref)), dev)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.2)
    opt = torch.optim.SGD(flow.parameters(), lr=0.2)
    draw = torch.Generator().manual_seed(2)
    for _ in range(3):
        pos, neg = torch.randint(0, 400, (b,), generator=draw), torch.randint(0, 400, (b,), generator=draw)
        w = class_weights(torch.tensor([5, 3, 2]), 2.0)[pos % 3]  # (b,) by each pair's class
        loss = _losses(ref, x, (pos, neg), w, lambda v: v.mean(0), lambda v: v.mean())
        opt_ref.zero_grad()
        loss.backward()
        opt_ref.step()
        sl = ddp.batch_share(b)
        loss_d = _losses(flow, x, (pos[sl], neg[sl]), w[sl], lambda v: ddp.global_mean(v, b), lambda v: ddp.ddp_mean(v, b))
        opt.zero_grad()
        loss_d.backward()
        opt.step()
    mine = ddp.unsync_flow_batchnorm(ddp.unwrap(flow)).state_dict()
    diffs = {k: float((mine[k].float() - v.float()).abs().max()) for k, v in ref.state_dict().items() if v.numel()}
    start = MixtureFlow(dim, 5, hidden=16, generator=torch.Generator().manual_seed(0)).state_dict()
    moved = max(float((v.float() - start[k].float()).abs().max()) for k, v in ref.state_dict().items() if v.numel())
    return {"rank": info.rank, "share": [sl.start, sl.stop], "max_diff": max(diffs.values()), "moved": moved}


def write_extracted() -> dict:
    """Each rank's share of 101 rows (string ids in byte tensors, pieces of 3 rows) written by rank 0 into one file."""
    import numpy as np

    import dlsa_cli.extract.shard as es
    import dlsa_cli.io.stream as stream
    from dlsa_cli.io.features import FeatureSet
    from dlsa_cli.runtime import distributed as d

    es.PIECE_BYTES, stream.IDS_IN_HEADER_MAX = 3 * 4 * 6, 64  # 3 rows of D = 6 a piece; ids past 64 bytes
    info, _ = d.setup("cpu")
    n, dim = 101, 6
    lo, hi = d.shard_range(n)
    x = np.arange(n * dim, dtype=np.float32).reshape(n, dim) / 7
    ids = np.array([f"img/ø{i:03d}.jpg" for i in range(n)])
    meta = {"backbone": "toy", "images": hi - lo, "skipped": [{"id": f"bad{info.rank}", "reason": "test"}]}
    part = FeatureSet(x[lo:hi], np.arange(lo, hi) % 5, ids[lo:hi], meta)
    out = Path(sys.argv[2]) / "extracted.safetensors"
    written = es.write_extracted(out, part, prov={"world_size": info.world_size}, dtype="float32")
    return {"rank": info.rank, "written": None if written is None else [written.n, written.dim, written.labelled, written.meta]}


if __name__ == "__main__":
    scenario, out = sys.argv[1], Path(sys.argv[2])
    import os

    result = {"collectives": collectives, "error": error, "ddp_flow": ddp_flow, "write_extracted": write_extracted}[scenario]()
    (out / f"{scenario}.{os.environ.get('RANK', '0')}.json").write_text(json.dumps(result))
