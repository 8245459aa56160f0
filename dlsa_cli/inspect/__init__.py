"""`dlsa inspect`: a summary of any file the tool reads or writes, one module per kind of file.

- `kinds`: `summarize`, which picks a file's summary by its recorded kind (`REGISTRY`);
- `features`: feature files of every format; `predictions`: predictions tables;
- `counts`: class-count profiles and counts JSON files;
- `generic`: the fallback for any safetensors, Parquet or JSON file;
- `fields`: what every summary shares (the summary dict's shape is documented there);
- `render`: a summary as one rich renderable.

Filters, split tables, classifiers and cascades are summarised by their own
stages (`flow.summary`, `classify.summary`, `cascade.summary`).
"""

from dlsa_cli.inspect.counts import counts_summary
from dlsa_cli.inspect.features import features_summary
from dlsa_cli.inspect.generic import generic_summary
from dlsa_cli.inspect.kinds import REGISTRY, detect_kind, summarize
from dlsa_cli.inspect.predictions import predictions_summary
from dlsa_cli.inspect.render import render, sparkline

__all__ = [
    "REGISTRY",
    "counts_summary",
    "detect_kind",
    "features_summary",
    "generic_summary",
    "predictions_summary",
    "render",
    "sparkline",
    "summarize",
]
