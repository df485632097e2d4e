"""One table (and figure) from several ``relax compare`` folders that differ in one base override, e.g. the
learning rate: per folder and variant, the projected test metric over seeds, the ratio to standard, paired wins, and
the runs that failed or diverged.

Each folder is labelled by its ``summary.json``'s base overrides (``optimizer.lr=0.003``), or by ``--key``'s value.

Example:
    for lr in 0.0003 0.001 0.003 0.01; do
        relax compare relaxcli/recipes/nbody_relaxed.yaml optimizer.lr=$lr --no-recipe \\
            --variant elastic=relax.theta.schedule=ace_elastic --seeds 3 --jobs 2 --threads 2 --out compare/lr-$lr
    done
    python benchmarks/sweep.py compare/lr-* --key optimizer.lr --seeds 3 --plot benchmarks/results/lr.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

from relaxcli.run.reports import _new_figure, _save


def load(folder: Path, key: str | None, seeds: int | None) -> tuple[str, dict[str, Any]]:
    """The folder's label, its runs by variant (``{variant: {seed: metric or None (failed)}}``) and their best
    epochs (``{variant: [epoch, ...]}``)."""
    summary = json.loads((folder / "summary.json").read_text())
    overrides = list(summary.get("overrides") or [])
    label = next((o.split("=", 1)[1] for o in overrides if key and o.startswith(key + "=")), " ".join(overrides))
    runs: dict[str, dict[int, float | None]] = {}
    epochs: dict[str, list[int]] = {}
    for run in summary["runs"].values():
        if seeds is not None and run["seed"] >= seeds:
            continue
        value = run.get("metric") if run.get("status") == "finished" else None
        ok = value is not None and math.isfinite(value)
        runs.setdefault(run["variant"], {})[run["seed"]] = value if ok else None
        if ok and run.get("best_epoch") is not None:
            epochs.setdefault(run["variant"], []).append(int(run["best_epoch"]))
    return label, {"baseline": summary["baseline"], "runs": runs, "best_epochs": epochs}


def rows(label: str, data: dict[str, Any]) -> list[str]:
    base = data["runs"].get(data["baseline"], {})
    base_ok = [v for v in base.values() if v is not None]
    out = []
    for variant, runs in data["runs"].items():
        ok = [v for v in runs.values() if v is not None]
        failed = len(runs) - len(ok)
        mean = statistics.fmean(ok) if ok else math.nan
        std = statistics.stdev(ok) if len(ok) > 1 else 0.0
        ratio = mean / statistics.fmean(base_ok) if ok and base_ok else math.nan
        paired = [(runs[s], base[s]) for s in runs if runs[s] is not None and base.get(s) is not None]
        wins = "-" if variant == data["baseline"] else f"{sum(v < b for v, b in paired)} of {len(paired)}"
        best = sorted(data["best_epochs"].get(variant, []))
        out.append(
            f"| {label} | {variant} | {len(ok)}/{len(runs)} | {mean:.5f} ± {std:.4f} | {ratio:.3f} | {wins} | "
            f"{', '.join(map(str, best)) or '-'} | {failed or '-'} |"
        )
    return out


def plot(table: list[tuple[str, dict[str, Any]]], key: str, path: Path) -> None:
    fig, (ax,) = _new_figure(1, width=6.5, height_per_row=4.0)
    try:
        xs = [float(label) for label, _ in table]
        log = True
    except ValueError:
        xs, log = list(range(len(table))), False
    variants = list(dict.fromkeys(v for _, d in table for v in d["runs"]))  # standard first, as compared
    for i, variant in enumerate(variants):
        shift = 1 + 0.04 * (i - (len(variants) - 1) / 2) if log else 0.08 * (i - (len(variants) - 1) / 2)
        means = []
        for x, (_, data) in zip(xs, table):
            ok = [v for v in data["runs"].get(variant, {}).values() if v is not None]
            ax.scatter([x * shift if log else x + shift] * len(ok), ok, s=14, alpha=0.6, color=f"C{i}")
            means.append(statistics.fmean(ok) if ok else math.nan)
        ax.plot([x * shift if log else x + shift for x in xs], means, marker="o", color=f"C{i}", label=variant)
    if log:
        ax.set_xscale("log")
    else:
        ax.set_xticks(xs, [label for label, _ in table])
    ax.set_yscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("projected test metric (dots: seeds)")
    ax.legend()
    _save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="relax compare output folders")
    parser.add_argument("--key", help="the base override that differs between folders (labels the rows)")
    parser.add_argument("--seeds", type=int, help="use seeds 0 .. N-1 only (folders may hold more)")
    parser.add_argument("--plot", type=Path, help="write a figure: metric against the key, per variant")
    args = parser.parse_args()
    table = [load(f, args.key, args.seeds) for f in args.folders]
    with contextlib.suppress(ValueError):  # numeric labels in order; others as given
        table.sort(key=lambda t: float(t[0]))
    columns = ["runs", "projected test (mean ± std)", "/ standard", "wins", "best epochs", "failed"]
    print(f"| {args.key or 'overrides'} | variant | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for label, data in table:
        print("\n".join(rows(label, data)))
    if args.plot:
        plot(table, args.key or "overrides", args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
