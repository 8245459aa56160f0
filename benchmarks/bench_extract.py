"""Images per second of `dlsa extract` with efficientnet-lite0, on CPU and (when present) GPU.

Runs the library's extraction loop (`dlsa_cli.extract.extract_features`) on the
real photos in ../shared/data/caltech101-sample at a few batch sizes and
decoding-worker counts, plus two reference rows measured in the same run:
decoding alone (Pillow, preprocessing to uint8 crops, one process) and the
model alone (pre-decoded batches already in memory, the ceiling of the full
loop). Prints one table per device with images/s and the ratio to the
model-only row.

    python benchmarks/bench_extract.py                   # 192 images, CPU (+ GPU if present)
    python benchmarks/bench_extract.py --images 512 --batch-sizes 32,128 --workers 0,2,4
    python benchmarks/bench_extract.py --device cuda --half
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pages import Page, add_markdown_option

from dlsa_cli.extract import ImageList, Preprocess, default_workers, extract_features, load_backbone, read_image_list

SHARED = Path(os.environ.get("DLSA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SAMPLE = SHARED / "caltech101-sample"


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_device(images: ImageList, dev: torch.device, batch_sizes: list[int], workers: list[int], half: bool) -> str:
    """Images per second of each configuration on one device, as a titled markdown table."""
    backbone = load_backbone("efficientnet-lite0")
    pre = Preprocess()
    n = len(images)
    rows: list[tuple[str, float]] = []

    # Decoding alone, one process.
    t = time.perf_counter()
    crops = [pre.load(p) for p in images.paths]
    decode_rate = n / (time.perf_counter() - t)

    # The model alone, on pre-decoded batches (the ceiling for the full loop).
    model = backbone.module.to(dev).eval().to(memory_format=torch.channels_last)
    if half:
        model = model.half()
    dtype = torch.float16 if half else torch.float32
    bs = max(batch_sizes)
    batches = [torch.from_numpy(np.stack(crops[i : i + bs])) for i in range(0, n, bs)]
    with torch.inference_mode():
        for b in batch_sizes:  # warm-up at every batch shape (oneDNN / cuDNN pick kernels per shape)
            backbone.features(pre.normalise(batches[0][:b].to(dev).permute(0, 3, 1, 2), dtype))
        sync(dev)
        t = time.perf_counter()
        for b in batches:
            backbone.features(pre.normalise(b.to(dev).permute(0, 3, 1, 2), dtype))
        sync(dev)
    rows.append((f"model only, batch {bs}" + (", half" if half else ""), n / (time.perf_counter() - t)))
    rows.append(("decode + resize + crop only, 1 process", decode_rate))

    for b in batch_sizes:
        for w in workers:
            t = time.perf_counter()
            extract_features(images, backbone, batch_size=b, workers=w, device=dev, half=half)
            sync(dev)
            rows.append((f"extract: batch {b}, {w} workers" + (", half" if half else ""),
                         n / (time.perf_counter() - t)))

    lines = [f"**{dev.type.upper()}**: {device_name(dev)}; efficientnet-lite0, {n} Caltech-101 photos, 224x224", "",
             "| configuration | images/s | vs model only |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.1f} | {rate / rows[0][1]:.2f}x |" for name, rate in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=192, help="how many photos (of the 1,010)")
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--workers", default=None, help=f"comma list (default 0,{default_workers()})")
    ap.add_argument("--device", default="all", help="cpu, cuda or all (CPU, then CUDA when present)")
    ap.add_argument("--half", action="store_true", help="also a half-precision pass on CUDA")
    add_markdown_option(ap)
    args = ap.parse_args()
    page = Page(ap, args, "Extraction speed")
    if not (SAMPLE / "manifest.csv").exists():
        sys.exit(f"the Caltech-101 photo sample is not at {SAMPLE}")
    full = read_image_list(SAMPLE / "manifest.csv")
    k = min(args.images, len(full))
    step = max(1, len(full) // k)  # spread over the classes
    pick = list(range(0, len(full), step))[:k]
    images = ImageList([full.ids[i] for i in pick], [full.paths[i] for i in pick], full.labels[pick], None, full.source,
                       full.root)
    batch_sizes = [int(v) for v in args.batch_sizes.split(",")]
    workers = [int(v) for v in (args.workers or f"0,{default_workers()}").split(",")]
    devices = []
    if args.device in ("cpu", "all"):
        devices.append((torch.device("cpu"), False))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append((torch.device("cuda"), False))
        if args.half:
            devices.append((torch.device("cuda"), True))
    for dev, half in devices:
        page.print(bench_device(images, dev, batch_sizes, workers, half))
    if not torch.cuda.is_available():
        page.print("(no CUDA device here: GPU rows not measured)")
    page.write()


if __name__ == "__main__":
    main()
