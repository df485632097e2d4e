"""Exactness: how equivariant are projected checkpoints, and how far from it are the relaxed ones.

For each built-in recipe and dtype, the script runs the real CLI: ``relax train`` (a short run) and then
``relax project`` on the best checkpoint, which itself refuses to write a model that fails its tolerance. Then it
measures, with :func:`relaxcli.testing.equivariance_error` (float64 group elements, random rotations, parity and
translations where the recipe's ``symmetry`` has them), the relative error ``max|f(g·x) − g·f(x)| / max|g·f(x)|`` of

- ``projected``: the projected ``.safetensors``, loaded with ``strict=True`` into a fresh instance of the user's class;
- ``relaxed θ=1``: the relaxed checkpoint with its trained branches switched on at θ = 1 (the peak of the triangle
  schedule; at the last step θ is exactly 0, so the stored model *is* its projection);
- ``relaxed γ kept``: for ``ace_elastic``, the relaxed model at its own best, with γ as learnt.

Floors (issue "built-in tasks and the evidence"): projected float32 ≤ 1e-6, float64 ≤ 1e-12; relaxed clearly > 0.

Example:
    python benchmarks/exactness.py --epochs 5 --json benchmarks/results/exactness.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import relaxcli
from relaxcli.recipe import Recipe
from relaxcli.run.build import restore
from relaxcli.run.checkpoint import load_checkpoint
from relaxcli.run.symmetry import example_inputs, symmetry_args
from relaxcli.testing import equivariance_error

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["nbody_relaxed", "nbody_elastic", "pointcloud_relaxed"]
FLOORS = {"float32": 1e-6, "float64": 1e-12}


def relax_cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "relaxcli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def error(model: torch.nn.Module, recipe: Recipe, samples: int, trials: int) -> float:
    args, kw = symmetry_args(recipe, example_inputs(recipe, samples), model)
    model.eval()
    torch.manual_seed(0)
    return equivariance_error(model, args, ntrials=trials, **kw).relative


def measure(recipe_name: str, dtype: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    run = work / f"{recipe_name}-{dtype}"
    overrides = [f"trainer.epochs={args.epochs}", f"trainer.dtype={dtype}", "trainer.threads=2"]
    if recipe_name.startswith("nbody"):
        overrides.append(f"data.train={args.nbody_train}")
    relax_cli("train", str(ROOT / "recipes" / f"{recipe_name}.yaml"), *overrides, "--run-dir", str(run))
    best = run / "checkpoints" / "best.safetensors"
    projected_path = work / f"{recipe_name}-{dtype}.projected.safetensors"
    relax_cli("project", str(best), "-o", str(projected_path))

    recipe, model, _ = restore(load_checkpoint(projected_path))  # strict load into the user's class
    row: dict[str, Any] = {
        "recipe": recipe_name,
        "dtype": dtype,
        "model": recipe.model.target,
        "projected": error(model, recipe, args.samples, args.trials),
    }
    _, _, relaxed = restore(load_checkpoint(best))
    assert relaxed is not None
    relaxed.set_theta(1.0)
    row["relaxed_theta1"] = error(relaxed, recipe, args.samples, args.trials)
    kept = run / "checkpoints" / "best_relaxed.safetensors"
    if kept.exists():
        _, _, relaxed = restore(load_checkpoint(kept))
        assert relaxed is not None
        row["relaxed_gamma_kept"] = error(relaxed, recipe, args.samples, args.trials)
        row["mean_abs_gamma"] = sum(abs(float(b.theta)) for b in relaxed.branches.values()) / len(relaxed.branches)
    row["floor"] = FLOORS[dtype]
    row["meets_floor"] = row["projected"] <= FLOORS[dtype]
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=RECIPES, help=f"built-in recipes (default {' '.join(RECIPES)})")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--epochs", type=int, default=5, help="training epochs per run (default 5)")
    p.add_argument("--nbody-train", type=int, default=200, help="N-body training systems (default 200)")
    p.add_argument("--samples", type=int, default=16, help="validation inputs per check (default 16)")
    p.add_argument("--trials", type=int, default=5, help="random group elements per case (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    print(f"# command: {shlex.join(['python', 'benchmarks/exactness.py', *(argv or sys.argv[1:])])}")
    print(
        f"# date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"relaxcli {relaxcli.__version__}; python {platform.python_version()}"
    )
    print(f"{'recipe':<20} {'dtype':<8} {'projected':>10} {'floor':>7} {'relaxed θ=1':>12} {'γ kept':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="relax-exactness-") as tmp:
        for name in args.recipes:
            for dtype in args.dtypes:
                r = measure(name, dtype, args, Path(tmp))
                rows.append(r)
                kept = f"{r['relaxed_gamma_kept']:.2e}" if "relaxed_gamma_kept" in r else "-"
                flag = "" if r["meets_floor"] else "  ABOVE FLOOR"
                print(
                    f"{name:<20} {dtype:<8} {r['projected']:>10.2e} {r['floor']:>7.0e} "
                    f"{r['relaxed_theta1']:>12.2e} {kept:>10}{flag}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": argv or sys.argv[1:], "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
