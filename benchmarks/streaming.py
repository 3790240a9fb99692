"""Memory of a folder run as the folder grows, read into memory and streamed from disk.

    python benchmarks/streaming.py                       # 500 .. 4000 images of 256x256
    python benchmarks/streaming.py --sizes 200 400 --size 64   # a quick look

For every size N it writes a folder of N PNG images with 0/255 masks (once, the smaller folders
are hard links into the largest), then runs ``noisyseg run`` on it in a fresh process, with
``dataset.options.stream`` false and true: the same short training (dilation noise r = 0.4, the
default corrector, 20 steps of 16 images, a small U-Net), the test split scored at the end of
the epoch and again with distances. A watcher reads the process's /proc status every 20 ms:

- ``anon``: the peak of its anonymous memory (RssAnon), what the process itself holds;
- ``rss``: the peak of its resident set (VmHWM): anonymous memory plus the pages of mapped files
  it touched, which the operating system drops again when memory is short.

The stream runs build their cache first (in a fresh cache folder), inside the measured process.
The last line is ``anon_mb_memory=<a,..> anon_mb_stream=<b,..> slope_memory_kb=<x>
slope_stream_kb=<y>``: the peaks per size and the growth per image from the smallest to the
largest size. Each size and mode is a row of the results store (benchmark ``streaming``, dataset
folder, preset ``<side>px-n<images>-<mode>``; metrics anon_mb, rss_mb, seconds), and the last
line one more (preset ``<side>px-n<sizes, comma-separated>``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import store

BENCHMARK = "streaming"

RUN = """
import sys, noisyseg
noisyseg.run({
    "device": "cpu", "seed": 0,
    "dataset": {"name": "folder", "options": {"root": sys.argv[1], "stream": sys.argv[2] == "1",
                                              "cache_dir": sys.argv[3]}},
    "noise": {"name": "dilation", "rate": 0.4},
    "backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
    "train": {"epochs": 1, "max_steps": 20, "batch_size": 16},
    "output": {"dir": sys.argv[4], "figure_images": 0},
}, progress=False)
"""


def write_folder(root: Path, n: int, size: int) -> None:
    """n PNG images (uint8) with one or two discs, their masks 0/255."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (rng.uniform(0.05, 0.15) * size) ** 2
        image = rng.normal(80, 20, (size, size)) + 90 * mask
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:05d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{i:05d}.png")


def link_subset(source: Path, target: Path, n: int) -> None:
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True)
        for i in range(n):
            os.link(source / sub / f"{i:05d}.png", target / sub / f"{i:05d}.png")


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def measure(root: Path, stream: bool, work: Path, tag: str) -> dict[str, float]:
    """Peak anonymous and resident memory (MB) and seconds of one run in a fresh process."""
    args = [sys.executable, "-c", RUN, str(root), "1" if stream else "0", str(work / f"cache-{tag}"),
            str(work / f"run-{tag}")]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"RssAnon": 0, "VmHWM": 0}

    def watch() -> None:
        while proc.poll() is None:
            for key, value in status_kb(proc.pid).items():
                peak[key] = max(peak[key], value)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output, _ = proc.communicate()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"run failed ({tag}):\n{output[-3000:]}")
    return {"anon": peak["RssAnon"] / 1024, "rss": peak["VmHWM"] / 1024,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[500, 1000, 2000, 4000])
    parser.add_argument("--size", type=int, default=256, help="image side, pixels")
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="noisyseg-streaming-"))
    sizes = sorted(args.sizes)
    full = work / f"folder-{sizes[-1]}"
    if not full.exists():
        print(f"writing {sizes[-1]} images of {args.size}x{args.size} to {full}", flush=True)
        write_folder(full, sizes[-1], args.size)
    rows = []
    print("| images | mode | peak anonymous MB | peak resident MB | seconds |\n|---|---|---|---|---|")
    for n in sizes:
        root = work / f"folder-{n}"
        if not root.exists():
            link_subset(full, root, n)
        for stream in (False, True):
            mode = "stream" if stream else "memory"
            m = measure(root, stream, work, f"{n}-{mode}")
            rows.append((n, mode, m))
            store.record(benchmark=BENCHMARK, preset=f"{args.size}px-n{n}-{mode}", dataset="folder",
                         noise="dilation", device="cpu", seconds=round(m["seconds"], 1),
                         metrics={"anon_mb": m["anon"], "rss_mb": m["rss"], "seconds": m["seconds"],
                                  "images": n, "side": args.size, "stream": stream})
            print(f"| {n} | {mode} | {m['anon']:.0f} | {m['rss']:.0f} | {m['seconds']:.0f} |", flush=True)

    def peaks(mode: str) -> list[float]:
        return [m["anon"] for n, md, m in rows if md == mode]

    def slope(mode: str) -> float:  # KB per image, smallest to largest folder
        p = peaks(mode)
        return (p[-1] - p[0]) * 1024 / (sizes[-1] - sizes[0]) if len(sizes) > 1 else float("nan")

    print(f"anon_mb_memory={','.join(f'{v:.0f}' for v in peaks('memory'))} "
          f"anon_mb_stream={','.join(f'{v:.0f}' for v in peaks('stream'))} "
          f"slope_memory_kb={slope('memory'):.1f} slope_stream_kb={slope('stream'):.1f}")
    store.record(benchmark=BENCHMARK, preset=f"{args.size}px-n{','.join(map(str, sizes))}",
                 dataset="folder", noise="dilation", device="cpu", note="the last line",
                 metrics={"sizes": sizes, "anon_mb_memory": peaks("memory"),
                          "anon_mb_stream": peaks("stream"), "slope_memory_kb": slope("memory"),
                          "slope_stream_kb": slope("stream")})


if __name__ == "__main__":
    main()
