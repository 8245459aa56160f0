"""How the code runs: the device, seeds, processes under torchrun, and package names loaded on first use.

- `device`: `--device auto|cpu|cuda|cuda:N` to a torch device, and seeding;
- `distributed`: torchrun's process group, row shards, gathers, agreed errors;
- `ddp`: training under torchrun so that a global batch means what it means in one process;
- `lazy`: a package's public names loaded from their modules on first use.

Nothing is imported here: `lazy` must load without torch.
"""

__all__: list[str] = []
