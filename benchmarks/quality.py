"""Quality: standard vs relaxed training of the same model, several seeds, projected test metric at the best
validation epoch (mean ± std), and the ratio relaxed / standard.

Each run is an ordinary ``relax train`` run of a built-in recipe pair (which differ only in ``relax:``), with the
same overrides for both; the run directories are kept under ``--runs`` for inspection.

Example:
    python benchmarks/quality.py --pair nbody --seeds 0 1 2 -o data.train=200 -o trainer.epochs=100
    python benchmarks/quality.py --pair pointcloud --seeds 0 1 2 --jobs 2 --threads 1
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
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from relaxcli.recipe import load_recipe
from relaxcli.run.trainer import Trainer

RECIPES = Path(__file__).resolve().parent.parent / "relaxcli" / "recipes"


def run_one(recipe_path: Path, overrides: list[str], run_dir: Path) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    start = time.time()
    summary = Trainer(recipe, run_dir, progress=False).fit()
    summary["seconds"] = round(time.time() - start, 1)
    return summary


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.5f}"
    return f"{statistics.mean(values):.5f} ± {statistics.stdev(values):.5f}"


def report(summary: dict) -> str:
    accuracy = summary.get("test_projected_accuracy")
    return (
        f"test (projected) {summary['test_projected']:.5f}"
        + (f"  accuracy {accuracy:.4f}" if accuracy is not None else "")
        + f"  val {summary['val_projected']:.5f}  best epoch {summary['best_epoch']}  {summary['seconds']} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default="nbody", help="recipe pair: recipes/<pair>_standard.yaml and _relaxed.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("-o", "--override", action="append", default=[], help="override for both recipes")
    p.add_argument("--relaxed-override", action="append", default=[], help="override for the relaxed recipe only")
    p.add_argument("--runs", type=Path, default=Path("benchmarks/runs"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, each in its own process")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    set_threads(args.threads)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    jobs = []  # (seed, variant, recipe, overrides, run_dir), standard before relaxed for each seed
    for seed in args.seeds:
        for variant in ("standard", "relaxed"):
            overrides = [f"seed={seed}", *args.override]
            if variant == "relaxed":
                overrides += args.relaxed_override
            run_dir = args.runs / f"{args.pair}-{variant}-s{seed}-{stamp}"
            jobs.append((seed, variant, RECIPES / f"{args.pair}_{variant}.yaml", overrides, run_dir))

    results: dict[str, list[dict]] = {"standard": [], "relaxed": []}
    # every run gets a fresh process; --jobs N runs N of them side by side (give each --threads 1)
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=get_context("spawn"),
        initializer=set_threads,
        initargs=(args.threads,),
        max_tasks_per_child=1,
    ) as pool:
        futures = [pool.submit(run_one, recipe, overrides, run_dir) for _, _, recipe, overrides, run_dir in jobs]
        for (seed, variant, _, _, run_dir), future in zip(jobs, futures):
            summary = future.result()
            results[variant].append(summary)
            print(f"seed {seed} {variant:8s}: {report(summary)}  {run_dir}", flush=True)

    std = [r["test_projected"] for r in results["standard"]]
    rel = [r["test_projected"] for r in results["relaxed"]]
    ratio = statistics.mean(rel) / statistics.mean(std)
    wins = sum(r < s for r, s in zip(rel, std))
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {datetime.date.today()}"
    )
    print("| variant | projected test metric (mean ± std) | seeds |")
    print("|---|---|---|")
    print(f"| standard | {mean_std(std)} | {len(std)} |")
    print(f"| relaxed | {mean_std(rel)} | {len(rel)} |")
    print(f"relaxed / standard = {ratio:.3f}; relaxed better in {wins} of {len(rel)} paired seeds")
    if all("test_projected_accuracy" in r for r in results["standard"] + results["relaxed"]):
        std_acc = [r["test_projected_accuracy"] for r in results["standard"]]
        rel_acc = [r["test_projected_accuracy"] for r in results["relaxed"]]
        print(f"projected test accuracy: standard {mean_std(std_acc)}, relaxed {mean_std(rel_acc)}")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "results": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
