"""A loaded cascade (filters, cluster-aided classifiers, final classifier): checks and routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.cascade.combine import Combine
from dlsa_cli.cascade.manifest import CascadeSpec, read_manifest
from dlsa_cli.classify.data import branch_inputs
from dlsa_cli.classify.memory import MemoryBank
from dlsa_cli.classify.model import Classifier
from dlsa_cli.errors import InputError, ModelMismatchError, NonFiniteError
from dlsa_cli.io.files import (
    file_sha256,
    read_safetensors_header,
    require_file,
)


class Cascade:
    """Loaded filters, cluster-aided classifiers and the final regular classifier."""

    def __init__(self, spec: CascadeSpec, filters: list[Any], classifiers: list[Classifier], final: Classifier,
                 combine: Combine | None = None, memory: MemoryBank | None = None):
        self.spec = spec
        self.filters = filters
        self.classifiers = classifiers
        self.final = final
        self.combine = combine  # memory weights and soft temperatures (cascade/combine.py); None: hard routes
        self.memory = memory

    @property
    def dim(self) -> int:
        return self.final.dim

    @property
    def num_classes(self) -> int:
        return self.final.num_classes

    @property
    def depth(self) -> int:
        return len(self.filters)

    @property
    def train_counts(self) -> np.ndarray:
        return np.asarray(self.final.meta.get("train_counts", []), dtype=np.int64)

    def check_features(self, dim: int, num_classes: int | None, *, path: Path | str | None) -> None:
        self.final.check_features(dim, num_classes, path=path)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu", allow_outside: bool = False) -> Cascade:
        """Read and check a cascade; 'cascade files do not belong together' when they do not."""
        from dlsa_cli.flow.filter import FlowFilter

        spec = read_manifest(path, allow_outside=allow_outside)
        filters = [FlowFilter.load(f, device=device) for f in spec.filters]
        classifiers = [Classifier.load(c) for c in spec.classifiers]
        final = Classifier.load(spec.final)

        def bad(what: str) -> ModelMismatchError:
            return ModelMismatchError(
                f"cascade files do not belong together: {what}",
                path=spec.manifest,
                hint="build every part from the same training data, or fix the manifest",
            )

        if final.kind == "cluster-aided":
            raise bad(f"the final classifier {spec.final.name} is cluster-aided; it must be a regular one")
        counts = np.asarray(final.meta.get("train_counts", []), dtype=np.int64)
        for i, (flt, clf, fp, cp) in enumerate(zip(filters, classifiers, spec.filters, spec.classifiers, strict=True),
                                               start=1):
            if flt.dim != final.dim or clf.dim != final.dim:
                raise bad(f"depth {i}: D is {flt.dim} (filter) / {clf.dim} (classifier) but {final.dim} (final)")
            if flt.num_classes != final.num_classes or clf.num_classes != final.num_classes:
                raise bad(
                    f"depth {i}: {flt.num_classes} (filter) / {clf.num_classes} (classifier) classes "
                    f"but {final.num_classes} (final)"
                )
            if flt.depth != i:
                raise bad(f"{fp.name} was trained at depth {flt.depth} but is listed at depth {i}")
            if clf.kind != "cluster-aided":
                raise bad(f"depth {i}: {cp.name} is a {clf.kind} classifier, not cluster-aided")
            rec = (clf.meta.get("filter") or {}).get("sha256")
            if rec != file_sha256(fp):
                raise bad(f"depth {i}: {cp.name} was trained with another filter than {fp.name}")
            for name, other in (("filter", flt.train_counts), ("classifier", clf.meta.get("train_counts", []))):
                if len(counts) and not np.array_equal(np.asarray(other, dtype=np.int64), counts):
                    raise bad(f"depth {i}: the {name}'s training counts differ from the final classifier's")
        try:
            combine = Combine.from_json(spec.raw["combine"]) if spec.raw.get("combine") else None
        except (TypeError, ValueError, AttributeError) as e:
            what = "memory / k / weights / temperatures as fit-cascade writes them"
            raise bad(f'"combine" is not {what} ({e})') from None
        memory = None if spec.memory is None else MemoryBank.load(spec.memory)
        if combine is not None:
            n_w, n_f = len(combine.weights), len(combine.floors)
            if n_w not in (0, len(filters) + 1) or n_f != n_w or len(combine.temperatures) not in (0, len(filters)):
                raise bad(f'"combine" has {n_w} memory weights, {n_f} floors and {len(combine.temperatures)} '
                          f"temperatures for {len(filters)} depths")
            if memory is not None and (memory.num_classes != final.num_classes
                                       or memory.features.shape[1] != final.dim):
                raise bad(f"the memory file {spec.memory.name if spec.memory else ''} has other classes or D")
        return cls(spec, filters, classifiers, final, combine, memory)

    @property
    def soft(self) -> bool:
        """Whether some depth routes softly (a temperature > 0): every branch then sees every sample."""
        return self.combine is not None and any(t > 0 for t in self.combine.temperatures)

    @torch.no_grad()
    def logits(
        self, x: np.ndarray, *, batch_size: int = 4096, device: torch.device | str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, C), route depth (N,) int32: d for cluster@d, 0 for regular) of features (N, D).

        Runs batch by batch, so memory grows with the batch, not with N.
        """
        n = x.shape[0]
        out = np.empty((n, self.num_classes), dtype=np.float32)
        route = np.zeros(n, dtype=np.int32)
        if self.soft:
            return self._soft_logits(x, out, route, batch_size, device)
        for s in range(0, n, batch_size):
            xb = np.asarray(x[s : s + batch_size], dtype=np.float32)  # (B, D)
            left = np.arange(len(xb))  # rows of this batch still unrouted
            for d, (flt, clf) in enumerate(zip(self.filters, self.classifiers, strict=False), start=1):
                if len(left) == 0:
                    break
                try:
                    sc = flt.score(xb[left], batch_size=batch_size, device=device, latent=clf.side_input == "latent")
                except NonFiniteError as e:  # number the rows within the whole input, not this batch
                    raise NonFiniteError.build(f"depth {d}'s {e.what}", s + left[e.rows], n, hint=e.hint) from None
                take = left[sc.routed]
                if len(take):
                    latent = None if sc.latent is None else sc.latent[sc.routed]
                    side, prior = branch_inputs(flt, xb[take], sc.cluster[sc.routed], latent,
                                                clf.side_input or "features")  # a file without it fed FC_b the features
                    out[s + take] = clf.logits(xb[take], side=side, prior=prior, device=device)
                    route[s + take] = d
                left = left[~sc.routed]
            if len(left):
                out[s + left] = self.final.logits(xb[left], device=device)
            if self.memory is not None:
                self._add_memory(xb, out[s : s + len(xb)], route[s : s + len(xb)], device)
        return out, route

    def _add_memory(self, xb: np.ndarray, out: np.ndarray, route: np.ndarray, device: torch.device | str) -> None:
        """Add to each row of a batch its branch's memory term (`Combine.log_prior`), in place; the training
        samples are searched once for the batch."""
        assert self.combine is not None and self.memory is not None
        vote = self.memory.vote(xb, device=device)
        for b in range(self.depth + 1):  # depths 1..D, then the final classifier (route 0)
            rows = route == (b + 1 if b < self.depth else 0)
            extra = self.combine.log_prior(vote[rows], b) if rows.any() else None
            if extra is not None:
                out[rows] += extra

    def _soft_logits(self, x: np.ndarray, out: np.ndarray, route: np.ndarray, batch_size: int,
                     device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
        """Every branch on every sample, mixed by route probability with memory (`cascade/combine.py`);
        the training samples are searched once per batch."""
        from dlsa_cli.cascade.combine import hard_route, mix, parts, route_probabilities

        c = self.combine
        assert c is not None
        for s in range(0, x.shape[0], batch_size):
            xb = np.asarray(x[s : s + batch_size], dtype=np.float32)  # (B, D)
            try:
                p = parts(self, xb, batch_size=batch_size, device=device)
            except NonFiniteError as e:  # number the rows within the whole input, not this batch
                raise NonFiniteError.build(f"a filter's {e.what}", s + e.rows, x.shape[0], hint=e.hint) from None
            vote = None if self.memory is None else self.memory.vote(xb, device=device)
            out[s : s + len(xb)] = mix(p, route_probabilities(p, c.temperatures), vote, c)
            route[s : s + len(xb)] = hard_route(p)
        return out, route


def load_model(path: str | Path, *, allow_outside: bool = False) -> Classifier | Cascade:
    """A classifier file, or a cascade (its folder or manifest; see `read_manifest` for `allow_outside`)."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".json":
        return Cascade.load(p, allow_outside=allow_outside)
    require_file(p, "model file")
    if p.suffix.lower() != ".safetensors":
        raise InputError("a model is a classifier .safetensors file or a cascade folder / cascade.json", path=p)
    _, kind, _, _ = read_safetensors_header(p)
    if kind != "classifier":
        raise ModelMismatchError(
            f"is a dlsa '{kind}' file, not a classifier or cascade" if kind else "is not a dlsa classifier",
            path=p,
            hint="pass a classifier from `dlsa fit-classifier` or a cascade folder",
        )
    return Classifier.load(p)


