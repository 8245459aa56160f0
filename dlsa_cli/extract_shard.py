"""Extracting features over torchrun's ranks: each rank runs the backbone on its contiguous share of the image list.

Rank r takes images `n*r//W .. n*(r+1)//W` of the list, in order; rank 0
gathers the ranks' features, labels and ids and joins them in rank order,
which is the list's order, so the file is the one a single process writes
(features to float tolerance: the backbone sees other batch compositions).
Images skipped with --skip-bad are listed from every rank. Without torchrun
this is `extract_features` itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dlsa_cli import distributed as dist
from dlsa_cli.extract import Backbone, ImageList, extract_features
from dlsa_cli.io.features import FeatureSet

__all__ = ["shard_images", "extract_sharded"]


def shard_images(images: ImageList, rank: int | None = None, world_size: int | None = None) -> ImageList:
    """The contiguous share of `images` that `rank` extracts."""
    lo, hi = dist.shard_range(len(images), rank, world_size)
    return replace(
        images,
        ids=images.ids[lo:hi],
        paths=images.paths[lo:hi],
        labels=None if images.labels is None else images.labels[lo:hi],
    )


def _join(parts: list[FeatureSet]) -> FeatureSet:
    """Rank-ordered FeatureSets as one, with every rank's skipped images listed."""
    meta = dict(parts[0].meta)
    meta["skipped"] = [s for p in parts for s in p.meta["skipped"]]
    meta["images"] = sum(p.n for p in parts)
    return FeatureSet(
        features=np.concatenate([p.features for p in parts]),
        labels=None if parts[0].labels is None else np.concatenate([p.labels for p in parts]),
        ids=np.concatenate([p.ids for p in parts]),
        meta=meta,
    )


def extract_sharded(images: ImageList, backbone: Backbone, **options: Any) -> FeatureSet | None:
    """`extract_features` over the ranks; the joined FeatureSet on rank 0, None on the others.

    A rank's bad image (without --skip-bad) stops every rank with its message.
    """
    me = dist.current()
    if not me.active:
        return extract_features(images, backbone, **options)
    mine = shard_images(images)
    part = dist.collective(lambda: extract_features(mine, backbone, **options))
    parts = dist.gather_object(part)
    return _join(parts) if me.is_main else None
