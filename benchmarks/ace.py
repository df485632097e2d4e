"""ACE benchmark: standard, triangle, ace and ace_elastic on N-body at E = 0 and E = 0.2, several seeds, one budget.

Every run is an ordinary training run of a built-in recipe (``nbody_standard``, ``nbody_relaxed`` (triangle),
``nbody_ace``, ``nbody_elastic``) with ``data.field`` set and the same overrides for all. Each finished run appends
one JSON line to ``--out``; runs already there are skipped, so the script can be stopped and restarted, and
``--shard i/n`` splits the runs between processes. ``--table`` prints the result table from ``--out``.

Example:
    python benchmarks/ace.py --seeds 0 1 2 -o trainer.epochs=150 --threads 1 --shard 0/2 &
    python benchmarks/ace.py --seeds 0 1 2 -o trainer.epochs=150 --threads 1 --shard 1/2
    python benchmarks/ace.py --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from relaxcli.recipe import load_recipe
from relaxcli.run.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "relaxcli" / "recipes"
METHODS = {
    "standard": "nbody_standard",
    "triangle": "nbody_relaxed",
    "ace": "nbody_ace",
    "ace_elastic": "nbody_elastic",
}
FIELDS = (0.0, 0.2)


def _runs(seeds: list[int]) -> list[tuple[float, str, int]]:
    return [(f, m, s) for f in FIELDS for m in METHODS for s in seeds]


def _done(out: Path) -> dict[tuple[float, str, int], dict]:
    if not out.exists():
        return {}
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["field"], r["method"], r["seed"]): r for r in rows}


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.5f}"
    return f"{statistics.mean(values):.5f} ± {statistics.stdev(values):.5f}"


def table(out: Path) -> str:
    rows = list(_done(out).values())
    lines = [
        "| E | method | seeds | projected test MSE | relaxed test MSE, γ kept | final mean |γ| | minutes/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        for m in METHODS:
            rs = [r for r in rows if r["field"] == f and r["method"] == m]
            if not rs:
                continue
            kept = [r["test_relaxed_kept"] for r in rs if r.get("test_relaxed_kept") is not None]
            gam = [r["final_abs_gamma"] for r in rs if r.get("final_abs_gamma") is not None]
            lines.append(
                f"| {f} | {m} | {len(rs)} | {_stat([r['test_projected'] for r in rs])} | {_stat(kept)} | "
                f"{_stat(gam) if gam else '-'} | {statistics.mean(r['seconds'] for r in rs) / 60:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-o", "--override", action="append", default=[], help="override for every recipe")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ace.jsonl"))
    p.add_argument("--runs", type=Path, default=Path("benchmarks/runs/ace"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i")
    p.add_argument("--table", action="store_true", help="print the table from --out and exit")
    args = p.parse_args()
    if args.table:
        print(table(args.out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    index, count = map(int, args.shard.split("/"))
    done = _done(args.out)
    for k, (field, method, seed) in enumerate(_runs(args.seeds)):
        if k % count != index or (field, method, seed) in done:
            continue
        overrides = [*args.override, f"data.field={field}", f"seed={seed}"]
        if args.threads:
            overrides.append(f"trainer.threads={args.threads}")
        recipe = load_recipe(RECIPES / f"{METHODS[method]}.yaml", overrides)
        run_dir = args.runs / f"E{field}-{method}-s{seed}"
        start = time.time()
        trainer = Trainer(recipe, run_dir, progress=False)
        summary = trainer.fit()
        gammas = [abs(float(b.theta)) for b in trainer.relaxed.branches.values()] if trainer.relaxed else None
        row = {
            "field": field,
            "method": method,
            "seed": seed,
            "overrides": overrides,
            "test_projected": summary["test_projected"],
            "val_projected": summary["val_projected"],
            "test_relaxed": summary["test_relaxed"],
            "test_relaxed_kept": summary.get("test_relaxed_kept"),
            "best_epoch": summary["best_epoch"],
            "steps": summary["steps"],
            "final_abs_gamma": sum(gammas) / len(gammas) if gammas else None,
            "seconds": round(time.time() - start, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
