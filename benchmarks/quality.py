"""Quality: standard vs relaxed training of the same model, several seeds, projected test metric at the best
validation epoch (mean ± std), and the ratio relaxed / standard.

Each run is an ordinary ``relax train`` run of a built-in recipe pair (which differ only in ``relax:``), with the
same overrides for both; the run directories are kept under ``--runs`` for inspection.

Example:
    python benchmarks/quality.py --pair nbody --seeds 0 1 2 -o data.train=200 -o trainer.epochs=100
    python benchmarks/quality.py --pair nbody --seeds 0 1 2 --relaxed-override relax.theta.end=0.7
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from relaxcli.recipe import load_recipe
from relaxcli.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "relaxcli" / "recipes"


def run_one(recipe_path: Path, overrides: list[str], run_dir: Path) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    start = time.time()
    summary = Trainer(recipe, run_dir, progress=False).fit()
    summary["seconds"] = round(time.time() - start, 1)
    return summary


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.5f}"
    return f"{statistics.mean(values):.5f} ± {statistics.stdev(values):.5f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="nbody", help="recipe pair: recipes/<pair>_standard.yaml and _relaxed.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-o", "--override", action="append", default=[], help="override for both recipes")
    p.add_argument("--relaxed-override", action="append", default=[], help="override for the relaxed recipe only")
    p.add_argument("--runs", type=Path, default=Path("benchmarks/runs"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results: dict[str, list[dict]] = {"standard": [], "relaxed": []}
    for seed in args.seeds:
        for variant in ("standard", "relaxed"):
            overrides = [f"seed={seed}", *args.override]
            if variant == "relaxed":
                overrides += args.relaxed_override
            run_dir = args.runs / f"{args.pair}-{variant}-s{seed}-{stamp}"
            summary = run_one(RECIPES / f"{args.pair}_{variant}.yaml", overrides, run_dir)
            results[variant].append(summary)
            print(f"seed {seed} {variant:8s}: test (projected) {summary['test_projected']:.5f}  "
                  f"val {summary['val_projected']:.5f}  best epoch {summary['best_epoch']}  "
                  f"{summary['seconds']} s  {run_dir}", flush=True)

    std = [r["test_projected"] for r in results["standard"]]
    rel = [r["test_projected"] for r in results["relaxed"]]
    ratio = statistics.mean(rel) / statistics.mean(std)
    wins = sum(r < s for r, s in zip(rel, std))
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.date.today()}")
    print("| variant | projected test metric (mean ± std) | seeds |")
    print("|---|---|---|")
    print(f"| standard | {mean_std(std)} | {len(std)} |")
    print(f"| relaxed | {mean_std(rel)} | {len(rel)} |")
    print(f"relaxed / standard = {ratio:.3f}; relaxed better in {wins} of {len(rel)} paired seeds")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "results": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
