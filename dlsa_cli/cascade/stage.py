"""The predict stage as one function: exactly the table `dlsa predict` writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dlsa_cli.cascade.config import PredictConfig
from dlsa_cli.cascade.predict_stream import PredictReport
from dlsa_cli.settings import to_table

__all__ = ["predict_path"]


def predict_path(
    model: str | Path,
    features: str | Path,
    out: str | Path,
    config: PredictConfig | None = None,
    *,
    filter_path: str | Path | None = None,
    device: Any = "cpu",
) -> PredictReport | None:
    """Predict FEATURES with a classifier file or a cascade (folder or manifest) into the table OUT.

    `filter_path`: the filter of a cluster-aided classifier predicted alone. The report on
    rank 0, None on the other torchrun ranks.
    """
    from dlsa_cli.cascade.model import Cascade, load_model
    from dlsa_cli.cascade.predict_stream import predict_file
    from dlsa_cli.io.files import check_output_file, provenance

    cfg = config or PredictConfig()
    check_output_file(out, suffixes=(".parquet",), inputs=[model, features, filter_path], replaces="predictions")
    cfg.check()
    mdl = load_model(model, allow_outside=cfg.allow_outside_paths)
    flt = None
    if filter_path is not None:
        from dlsa_cli.flow import FlowFilter

        flt = FlowFilter.load(filter_path, device=device)
    t0 = time.perf_counter()
    inputs: list[Path] = [Path(features)]
    if isinstance(mdl, Cascade):
        inputs += [mdl.spec.manifest, *mdl.spec.filters, *mdl.spec.classifiers, mdl.spec.final]
    else:
        inputs.append(Path(model))
    options = {"model": model, "topk": cfg.topk, "device": str(device)}
    prov = provenance("predict", options, inputs, settings={"": to_table(cfg)})
    report = predict_file(mdl, features, out, topk=cfg.topk, batch_size=cfg.batch_size, device=device, flt=flt,
                          prov=prov)
    if report is not None:
        report.output, report.seconds = str(out), round(time.perf_counter() - t0, 3)
    return report
