"""Decoding JPEGs to the training size with and without PIL's draft mode (issue 21).

Two sets: --synthetic N photo-like JPEGs of --synthetic-size (smooth gradients, edges and noise,
quality 90; made once under $LEANVISION_BENCH_CACHE) as phone photos are, and the first --limit
real photos of --data (default: the clothing set's train/ split, 400x533, extracted from
../shared/data/clothing-jpg.tar.gz if needed). Each image goes from file to uint8 [3, H, W] at
--size on one thread, either by a full decode then the exact resize (`full`) or as training
decodes it, with a DCT-domain downscale first when the JPEG is at least twice the target
(`draft`, leanvision.data.images.decode_resized). The modes alternate within each of --rounds
rounds so that a change in machine load hits both; figures: median and range of images/s,
speedup of the medians, mean absolute pixel difference between the modes, and the share of the
machine other processes used. Writes bench/results/decode.json."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CACHE,
    CpuShare,
    begin,
    clothing,
    console,
    die,
    print_table,
    result_record,
    write_result,
)
from PIL import Image
from protocol import interleave, ratio

from leanvision.data.images import decode_resized, load_rgb, to_tensor_resized

MODES = ("full", "draft")


def main() -> None:
    args = parse_args()
    run = begin()
    size = (args.size, args.size)
    sets = {"synthetic": synthetic(args.synthetic, args.synthetic_size)}
    sets["real"] = real_photos(args.data, args.limit)
    figures: dict[str, Any] = {}
    with CpuShare() as share:
        for name, files in sets.items():
            figures[name] = measure(files, size, args.rounds)
    figures["cpu_share_of_others"] = round(share.others, 3)
    rows = []
    for name in sets:
        f = figures[name]
        for mode in MODES:
            m = f[mode]
            rows.append([f"{name} {f['image_size']}", mode, m["median"], m["min"], m["max"],
                         f["speedup"]["median"] if mode == "draft" else None,
                         f["mean_abs_diff"] if mode == "draft" else None])
    print_table(f"decode to {args.size}x{args.size}, images/s on one thread "
                f"({args.rounds} rounds; others used {share.others:.0%} of the machine)",
                ["set", "mode", "median", "min", "max", "speedup", "mean |diff|"], rows, run)
    config = {"size": list(size), "rounds": args.rounds, "synthetic": args.synthetic,
              "synthetic_size": args.synthetic_size, "data": str(args.data),
              "limit": args.limit, "threads": 1}
    write_result("decode", result_record("decode", figures, config, run))


def measure(files: list[Path], size: tuple[int, int], rounds: int) -> dict[str, Any]:
    """Both modes in `rounds` interleaved rounds (protocol.interleave: A B, B A, ...), so a
    trend in load does not favour one of them; images/s per round."""
    outputs: dict[str, list[np.ndarray]] = {}

    def timed(mode: str):
        def call() -> float:
            start = time.perf_counter()
            out = [decode(path, size, mode) for path in files]
            speed = len(files) / (time.perf_counter() - start)
            outputs.setdefault(mode, out)
            return speed
        return call

    speeds = interleave({mode: timed(mode) for mode in MODES}, rounds)
    diff = np.mean([np.abs(a.astype(np.int16) - b).mean()
                    for a, b in zip(outputs["full"], outputs["draft"], strict=True)])
    with Image.open(files[0]) as first:
        shape = f"{first.width}x{first.height}"
    return {"images": len(files), "image_size": shape, "mean_abs_diff": round(float(diff), 3),
            **speeds, "speedup": ratio(speeds["draft"], speeds["full"])}


def decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    if mode == "draft":
        return decode_resized(path, size).numpy()
    return to_tensor_resized(load_rgb(path), size).numpy()


def synthetic(count: int, wh: str) -> list[Path]:
    w, h = (int(v) for v in wh.lower().split("x"))
    folder = CACHE / f"decode-synthetic-{w}x{h}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:03d}.jpg" for i in range(count)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        console.print(f"making {len(missing)} {w}x{h} JPEGs in {folder} (once) ...")
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 8, (512, 512, 3)).astype(np.int16)
    for path in missing:
        seed = int(path.stem)
        make_photo(path, w, h, np.random.default_rng(seed), noise)
    return files


def make_photo(path: Path, w: int, h: int, rng: np.random.Generator,
               noise: np.ndarray) -> None:
    """A coarse random colour field upsampled smoothly (large soft regions, as in a photo),
    a few hard-edged blocks, and sensor-like noise; the noise tile is shifted per image."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC),
                       dtype=np.int16)
    for _ in range(6):
        x, y = int(rng.integers(0, w - w // 5)), int(rng.integers(0, h - h // 5))
        field[y:y + h // 6, x:x + w // 6] = rng.integers(0, 256, 3)
    dy, dx = (int(v) for v in rng.integers(0, 512, 2))
    tiled = np.tile(np.roll(noise, (dy, dx), axis=(0, 1)), (h // 512 + 1, w // 512 + 1, 1))
    pixels = np.clip(field + tiled[:h, :w], 0, 255).astype(np.uint8)
    tmp = path.with_suffix(".tmp.jpg")
    Image.fromarray(pixels).save(tmp, quality=90)
    tmp.rename(path)


def real_photos(data: Path | None, limit: int) -> list[Path]:
    folder = data if data is not None else clothing() / "train"  # extracted once, atomically
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        die(f"no JPEG files under {folder}")
    return files[:limit]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224, help="square target side, px")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--synthetic", type=int, default=20, help="synthetic JPEGs to make")
    p.add_argument("--synthetic-size", default="4000x3000", help="WxH of the synthetic JPEGs")
    p.add_argument("--data", type=Path, default=None,
                   help="folder of real JPEGs (default: the clothing set's train/)")
    p.add_argument("--limit", type=int, default=300, help="real photos used, first by name")
    return p.parse_args()


if __name__ == "__main__":
    main()
