"""Data generation time: the charged N-body splits (3000 + 2000 + 2000 trajectories) and the point clouds.

Each configuration is generated ``--repeats`` times from scratch (``cache=False``: nothing is read or written), and
once more into a fresh cache folder followed by a load from it (the cost a second run pays). Reported: min and
median seconds. The floor (issue "built-in tasks and the evidence") is 60 s for the N-body splits on the 2-core
machine; the published generator takes 13-19 min for the same splits (``shared/reference/benchmarks.md``).

Example:
    python benchmarks/data.py --repeats 3 --json benchmarks/results/data.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import relaxcli
from relaxcli.tasks import NBodyData, PointCloudData


def timed(make: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        make()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    configs: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        ("nbody 3000/2000/2000", NBodyData, {"train": 3000, "val": 2000, "test": 2000}),
        ("nbody 3000/2000/2000, field 0.2", NBodyData, {"train": 3000, "val": 2000, "test": 2000, "field": 0.2}),
        ("nbody 200/500/500 (recipes)", NBodyData, {"train": 200, "val": 500, "test": 500}),
        (
            "pointcloud 1024/512/512 x 256 (recipes)",
            PointCloudData,
            {"train": 1024, "val": 512, "test": 512, "num_points": 256},
        ),
    ]
    print(f"# command: {shlex.join(['python', 'benchmarks/data.py', *(argv or sys.argv[1:])])}")
    print(
        f"# date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; numpy {np.__version__}; "
        f"torch {torch.__version__}; relaxcli {relaxcli.__version__}; python {platform.python_version()}"
    )
    print(f"{'dataset':<42} {'generate min s':>14} {'median s':>9} {'cache read s':>19}")
    rows = []
    for name, cls, kw in configs:
        gen = timed(lambda: cls(**kw, cache=False), args.repeats)  # noqa: B023  (called at once)
        with tempfile.TemporaryDirectory(prefix="relax-data-") as tmp:
            cls(**kw, cache_dir=tmp)  # simulate and write
            t0 = time.perf_counter()
            loaded = cls(**kw, cache_dir=tmp)
            read = time.perf_counter() - t0
            assert set(loaded.sources.values()) == {"cache"}, loaded.sources
        row = {
            "dataset": name,
            "params": kw,
            "generate_s": gen,
            "min_s": min(gen),
            "median_s": statistics.median(gen),
            "cache_read_s": read,
        }
        rows.append(row)
        print(f"{name:<42} {row['min_s']:>14.2f} {row['median_s']:>9.2f} {read:>19.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": argv or sys.argv[1:], "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
