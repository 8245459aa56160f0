"""Extracting features over torchrun's ranks: each rank runs the backbone on its contiguous share of the image list.

Rank r takes images `n*r//W .. n*(r+1)//W` of the list, in order. Then
`write_extracted` writes one file: every rank's row count, labels, ids and
skipped images are gathered first (small: no features), so rank 0 sizes the
file from its header; it writes its own rows, then receives each other
rank's features in pieces of about `PIECE_BYTES`, in rank order, which is
the list's order. So the file is the one a single process writes (features
to float tolerance: the backbone sees other batch compositions), and rank 0
holds its own share and one piece, never the whole matrix. Without torchrun
this is `extract_features` and `write_features` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.extract.backbones import Backbone
from dlsa_cli.extract.images import ImageList
from dlsa_cli.extract.loop import extract_features
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.runtime import distributed as dist

__all__ = ["Extracted", "extract_sharded", "shard_images", "write_extracted"]

PIECE_BYTES = 64 * 2**20  # features sent to rank 0 at a time


def shard_images(images: ImageList, rank: int | None = None, world_size: int | None = None) -> ImageList:
    """The contiguous share of `images` that `rank` extracts."""
    lo, hi = dist.shard_range(len(images), rank, world_size)
    return replace(
        images,
        ids=images.ids[lo:hi],
        paths=images.paths[lo:hi],
        labels=None if images.labels is None else images.labels[lo:hi],
    )


@dataclass
class Extracted:
    """What was written: rows, dimension, whether labelled, and the file's meta (skipped images, classes)."""

    n: int
    dim: int
    labelled: bool
    meta: dict[str, Any]


def _joined_meta(heads: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's meta with every rank's skipped images and the total image count."""
    meta = dict(heads[0]["meta"])
    meta["skipped"] = [s for h in heads for s in h["meta"]["skipped"]]
    meta["images"] = sum(h["n"] for h in heads)
    return meta


def extract_sharded(images: ImageList, backbone: Backbone, **options: Any) -> FeatureSet:
    """`extract_features` of this rank's share of `images` (all of them without torchrun).

    A rank's bad image (without --skip-bad) stops every rank with its message.
    """
    if not dist.current().active:
        return extract_features(images, backbone, **options)
    mine = shard_images(images)
    return dist.collective(lambda: extract_features(mine, backbone, **options))


def write_extracted(out: str | Path, part: FeatureSet, *, prov: dict[str, Any], dtype: str) -> Extracted | None:
    """Write every rank's `part` (this rank's FeatureSet) to `out` in rank order; what was written on
    rank 0, None elsewhere."""
    from dlsa_cli.io.features import write_features

    me = dist.current()
    if not me.active:
        write_features(out, part, prov=prov, dtype=dtype)
        return Extracted(part.n, part.dim, part.labels is not None, part.meta)
    heads = dist.all_gather_object({"n": part.n, "dim": part.dim, "meta": part.meta, "labels": part.labels,
                                    "ids": part.ids})
    if me.is_main:
        written = _write_pieces(out, part, heads, prov=prov, dtype=dtype)
    else:
        _send_pieces(part, heads)
        written = None
    dist.barrier()
    return written


def _pieces(heads: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(rank, start, stop) of every piece a rank other than 0 sends, in file order."""
    out = []
    for r, h in enumerate(heads[1:], start=1):
        step = max(1, PIECE_BYTES // max(4 * h["dim"], 1))
        out += [(r, a, min(a + step, h["n"])) for a in range(0, h["n"], step)]
    return out


def _send_pieces(part: FeatureSet, heads: list[dict[str, Any]]) -> None:
    me = dist.current().rank
    for r, a, b in _pieces(heads):
        dist.gather_object(part.features[a:b] if r == me else None)


def _write_pieces(out: str | Path, part: FeatureSet, heads: list[dict[str, Any]], *, prov: dict[str, Any],
                  dtype: str) -> Extracted:
    """Rank 0: the file sized from every rank's head, filled with its own rows, then the others' pieces."""
    from dlsa_cli.io import stream

    n, dim = sum(h["n"] for h in heads), heads[0]["dim"]
    labelled = heads[0]["labels"] is not None
    labels = np.concatenate([h["labels"] for h in heads]) if labelled else None
    ids = np.concatenate([np.asarray(h["ids"], dtype=str) for h in heads])
    meta = _joined_meta(heads)
    id_bytes = stream.ids_nbytes(ids)
    in_header = id_bytes <= stream.IDS_IN_HEADER_MAX
    with stream.stream_features(
        out, n, dim, dtype=np.dtype(dtype), labels=labelled, ids=None if in_header else "str", ids_bytes=id_bytes,
        header_ids=ids if in_header else None, meta={k: v for k, v in meta.items() if k != "provenance"}, prov=prov,
    ) as sink:

        def append(block: np.ndarray) -> None:
            a, b = sink.rows, sink.rows + len(block)
            sink.append(block, None if labels is None else labels[a:b], None if in_header else ids[a:b])

        append(part.features)
        for _ in _pieces(heads):
            got = dist.gather_object(None)
            assert got is not None  # rank 0 gathers
            append(next(x for x in got if x is not None))
    return Extracted(n, dim, labelled, meta)
