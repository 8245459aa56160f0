"""The DLSA cascade: how it is described, checked, and run; predictions tables.

A cascade is a folder holding `cascade.json` (the manifest), easy to write by
hand or by a script; paths are relative to the manifest's folder:

    {"dlsa_kind": "cascade",
     "depths": [{"filter": "d1/filter.safetensors", "classifier": "d1/cluster.safetensors"},
                {"filter": "d2/filter.safetensors", "classifier": "d2/cluster.safetensors"}],
     "final": "final.safetensors"}

A sample goes through filter 1: if routed (log p(x) >= the filter's
threshold) the depth-1 cluster-aided classifier predicts it; otherwise it goes
on to filter 2, and so on; what no filter routes is predicted by the final
regular classifier. Routes are therefore exhaustive and disjoint: every
sample gets exactly one prediction.

Loading checks that the files belong together: every filter and classifier
has the same feature dimension and class count, the same original training
counts, filter i was trained at depth i, and each cluster-aided classifier
records the SHA-256 of exactly the filter it sits behind.
"""

from dlsa_cli.cascade.fit import CascadePlan, CascadeRun, fit_cascade
from dlsa_cli.cascade.manifest import (
    MANIFEST,
    CascadeSpec,
    read_manifest,
    write_manifest,
)
from dlsa_cli.cascade.model import Cascade, load_model
from dlsa_cli.cascade.predict import (
    Prediction,
    predict,
    prediction_columns,
)
from dlsa_cli.cascade.summary import summary

__all__ = [
    "MANIFEST",
    "Cascade",
    "CascadePlan",
    "CascadeRun",
    "CascadeSpec",
    "Prediction",
    "fit_cascade",
    "load_model",
    "predict",
    "prediction_columns",
    "read_manifest",
    "summary",
    "write_manifest",
]
