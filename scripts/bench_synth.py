"""Time the synthetic radiograph generator, DICOM and JSON writing included.

Example::

    python scripts/bench_synth.py --n 100 --size 1024 --regions cervical lumbar

prints one row per region: images, wall seconds, CPU seconds (workers included), images/s and MB written
(files go to a temporary folder, then deleted). By default OpenCV runs one thread, so one worker is one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from monai_spine.data.synthetic import SYNTH_REGIONS, generate_dataset  # noqa: E402

__all__ = ["bench", "main"]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers), all threads."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def bench(n: int, size: int, regions: list[str], seed: int, hard_case_rate: float, workers: int) -> list[dict]:
    """Generate ``n`` images per region into a temporary folder; return one timing row per region."""
    rows = []
    for region in regions:
        with tempfile.TemporaryDirectory(prefix=f"bench-synth-{region}-") as tmp:
            t0 = time.perf_counter()
            c0 = _cpu_seconds()
            paths = generate_dataset(tmp, region, n, seed, hard_case_rate=hard_case_rate, size=size, workers=workers)
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds() - c0
            mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
        rows.append({"region": region, "images": len(paths), "seconds": dt, "cpu_s": cpu, "mb": mb})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100, help="images per region (default 100)")
    p.add_argument("--size", type=int, default=1024, help="image height and width in pixels (default 1024)")
    p.add_argument("--regions", nargs="+", default=list(SYNTH_REGIONS), choices=SYNTH_REGIONS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hard-case-rate", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads in this process (default 1: one core)")
    args = p.parse_args(argv)
    cv2.setNumThreads(args.threads)
    rows = bench(args.n, args.size, args.regions, args.seed, args.hard_case_rate, args.workers)
    print(f"synthetic radiographs, {args.size}x{args.size} px, {args.workers} worker(s), {args.threads} thread(s), "
          f"hard-case rate {args.hard_case_rate:g}, {os.cpu_count()} CPUs visible")
    print(f"{'region':<10} {'images':>7} {'seconds':>8} {'cpu s':>8} {'images/s':>9} {'MB':>7}")
    for r in rows:
        print(f"{r['region']:<10} {r['images']:>7d} {r['seconds']:>8.2f} {r['cpu_s']:>8.2f} "
              f"{r['images'] / max(r['seconds'], 1e-9):>9.2f} {r['mb']:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
