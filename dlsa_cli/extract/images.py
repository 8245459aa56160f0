"""Image lists: what `dlsa extract` reads, and the ids and labels it records.

`read_image_list(source, root=)` reads an image folder (one sub-folder per
class; labels are the sorted folder names, a flat folder is unlabelled), a CSV
with a `path,label` header (label optional; non-integer labels are class names
in sorted order), or a whitespace-separated list file (`relative/path.jpg
label`, the ImageNet-LT / Places-LT / iNaturalist layout). Ids are the paths
exactly as written (for a folder, the path relative to it).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlsa_cli.errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "ImageList", "read_image_list"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass
class ImageList:
    """Images to extract: ids as written, where to read them, labels when known."""

    ids: list[str]
    paths: list[str]
    labels: np.ndarray | None = None  # (N,) int64
    class_names: list[str] | None = None
    source: Path | None = None
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)


def read_image_list(source: str | Path, *, root: str | Path | None = None) -> ImageList:
    """Read an image folder, a `path,label` CSV or a whitespace list file.

    `root` is the folder that relative paths in a CSV or list file start from
    (default: the list file's own folder). A folder is its own root.
    """
    src = Path(source)
    if not src.exists():
        raise InputError("image folder or list does not exist", path=src, hint="check the path")
    root_path = None
    if root is not None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise InputError(
                "image root does not exist" if not root_path.exists() else "image root is not a folder",
                path=root_path,
                hint="--root is the folder the listed paths start from",
            )
    if src.is_dir():
        if root_path is not None:
            raise InputError(
                "--root is for CSV and list files; a folder is its own root", path=src, hint="drop --root"
            )
        return _read_folder(src)
    base = root_path if root_path is not None else src.parent
    if src.suffix.lower() == ".csv":
        images = _read_csv(src, base)
    else:
        images = _read_list_file(src, base)
    if not len(images):
        raise InputError("lists no images", path=src, hint="add one image per line")
    return images


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> list[str]:
    """Image files under `folder`, recursively, as sorted POSIX paths relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        found.extend((rel / f).as_posix() for f in sorted(filenames) if _is_image(f))
    return found


def _read_folder(folder: Path) -> ImageList:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    class_dirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_images = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    hint = "lay it out as FOLDER/CLASS/IMAGE.jpg, one sub-folder per class"
    if class_dirs and top_images:
        raise InputError(
            f"holds images both at its top level ({top_images[0]}, ...) and in sub-folders", path=folder, hint=hint
        )
    if top_images:  # a flat folder: unlabeled images
        return ImageList(top_images, [str(folder / n) for n in top_images], None, None, folder, folder)
    ids: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_dirs):
        rel = [f"{name}/{p}" for p in _walk_images(folder / name)]
        ids.extend(rel)
        labels.extend([label] * len(rel))
    if not ids:
        raise InputError(
            f"no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})", path=folder, hint=hint
        )
    return ImageList(
        ids, [str(folder / i) for i in ids], np.asarray(labels, dtype=np.int64), class_dirs, folder, folder
    )


def _resolve(root: Path, written: str) -> str:
    p = Path(written)
    return str(p if p.is_absolute() else root / p)


def _check_unique(ids: list[str], lines: list[int], src: Path) -> None:
    seen: dict[str, int] = {}
    for i, line in zip(ids, lines, strict=True):
        if i in seen:
            raise InputError(
                f"line {line} lists '{i}' again (first on line {seen[i]})", path=src, hint="each image once"
            )
        seen[i] = line


def _read_csv(src: Path, root: Path) -> ImageList:
    with open(src, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InputError("is empty", path=src, hint="the first row must be the header 'path,label'")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header:
        raise InputError(
            f"no 'path' column in the header (first row: {','.join(rows[0])[:80]})",
            path=src,
            hint="the first row must be the header 'path,label' (label optional)",
        )
    pi = header.index("path")
    li = header.index("label") if "label" in header else None
    ids: list[str] = []
    raw: list[str] = []
    lines: list[int] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= pi or not row[pi].strip():
            raise InputError(f"line {n} has no path", path=src)
        ids.append(row[pi].strip())
        lines.append(n)
        if li is not None:
            if len(row) <= li or not row[li].strip():
                raise InputError(f"line {n} has no label", path=src, hint="fill in every label, or drop the column")
            raw.append(row[li].strip())
    _check_unique(ids, lines, src)
    labels, names = _parse_labels(raw, lines, src) if li is not None else (None, None)
    return ImageList(ids, [_resolve(root, i) for i in ids], labels, names, src, root)


def _parse_labels(raw: list[str], lines: list[int], src: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are; class names (any non-integer) mapped to sorted order."""
    try:
        labels = np.asarray([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        names = sorted(set(raw))
        index = {n: k for k, n in enumerate(names)}
        return np.asarray([index[v] for v in raw], dtype=np.int64), names
    if labels.size and labels.min() < 0:
        k = int(np.argmin(labels))
        raise InputError(f"line {lines[k]} has a negative label {labels[k]}", path=src, hint="number classes 0..C-1")
    return labels, None


def _read_list_file(src: Path, root: Path) -> ImageList:
    ids: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    hint = "each line is 'relative/path.jpg label' with an integer label"
    try:
        with open(src, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                parts = text.rsplit(maxsplit=1)
                if len(parts) < 2:
                    raise InputError(f"line {n} has no label ('{text[:60]}')", path=src, hint=hint)
                try:
                    label = int(parts[1])
                except ValueError:
                    raise InputError(f"line {n}: label '{parts[1][:40]}' is not an integer", path=src,
                                     hint=hint) from None
                if label < 0:
                    raise InputError(f"line {n} has a negative label {label}", path=src, hint=hint)
                ids.append(parts[0])
                labels.append(label)
                lines.append(n)
    except UnicodeDecodeError:
        raise InputError("is not a text list file", path=src, hint=hint) from None
    _check_unique(ids, lines, src)
    return ImageList(ids, [_resolve(root, i) for i in ids], np.asarray(labels, dtype=np.int64), None, src, root)
