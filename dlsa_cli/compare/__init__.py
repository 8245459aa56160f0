"""Pieces of `dlsa compare`: does DLSA help on these features, and can the answer be trusted?

- `config`: `CompareConfig` and the run names; `run`: `compare` itself; `report`: compare.json and its
  verdict; `controls`: the routing controls;
- `stats`: paired differences over seeds (mean, sd, t-interval) and a paired
  bootstrap over test samples for one seed;
- `ceiling`: the paper's Fig. 2 probe (accuracy against separation accuracy,
  soft group priors and hard group label spaces) and where a routing sits on it.

Each module is imported by its own name (`dlsa_cli.compare.stats`); the package
itself loads nothing, so the statistics do not import torch.
"""

__all__: list[str] = []
