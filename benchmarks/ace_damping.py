"""Damped ACE: how γ settles, from the run directories of ``relax train`` (or ``relax compare``) runs of ``ace``.

For each run: the first step at which each site's γ reaches 0 or below, the sign changes of γ after that (over the
logged evaluations, all sites), the largest |γ| at the last evaluation, the lowest γ, and the projected validation
and test loss; and one figure with γ and λ per site for every run (``--plot``).

Example:
    python benchmarks/ace_damping.py runs/ascent runs/pi300 --plot benchmarks/results/ace-damping.png
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from relaxcli.run.reports import _new_figure, _save, _site_series
from relaxcli.run.runlog import MetricsLog


def settle(run: Path) -> dict:
    evals = [r for r in MetricsLog.read(run / "metrics.jsonl") if r.get("kind") == "eval"]
    gamma = _site_series(evals, "gamma")
    first, flips = [], 0
    for steps, values in gamma.values():
        crossed = next((i for i, v in enumerate(values) if v <= 0), None)
        first.append(steps[crossed] if crossed is not None else None)
        if crossed is not None:
            tail = [v for v in values[crossed:] if v != 0]
            flips += sum(a * b < 0 for a, b in itertools.pairwise(tail))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    crossed_at = [s for s in first if s is not None]
    return {
        "run": run.name,
        "steps": int(evals[-1]["step"]) if evals else None,
        "first_crossing": min(crossed_at) if crossed_at else None,
        "sign_changes_after": flips,
        "max_abs_gamma_end": max(abs(values[-1]) for _, values in gamma.values()),
        "min_gamma": min(min(values) for _, values in gamma.values()),
        "val_projected": summary.get("val_projected"),
        "test_projected": summary.get("test_projected"),
    }


def plot(runs: list[Path], path: Path) -> None:
    fig, axes = _new_figure(2, width=9.0)
    for run, color in zip(runs, [f"C{i}" for i in range(10)]):
        evals = [r for r in MetricsLog.read(run / "metrics.jsonl") if r.get("kind") == "eval"]
        for ax, key in zip(axes, ("gamma", "lambda")):
            for i, (steps, values) in enumerate(_site_series(evals, key).values()):
                ax.plot(steps, values, color=color, lw=0.8, alpha=0.6, label=run.name if i == 0 else None)
    axes[0].axhline(0, color="k", lw=0.6)
    axes[0].set_ylim(-0.8, 1.05)
    axes[0].set_title("γ per site (every site a line)")
    axes[1].set_title("λ per site")
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.legend(fontsize="small")
    _save(fig, path)


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _step(x: float | None) -> str:
    return "never" if x is None else str(int(x))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()
    print("| run | steps | first γ ≤ 0 | sign changes after | max abs γ at end | min γ | val (proj.) | test (proj.) |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        s = settle(run)
        print(
            f"| {s['run']} | {s['steps']} | {_step(s['first_crossing'])} | {s['sign_changes_after']} | "
            f"{s['max_abs_gamma_end']:.2e} | {s['min_gamma']:.3g} | {_g(s['val_projected'])} | "
            f"{_g(s['test_projected'])} |"
        )
    if args.plot:
        plot(args.runs, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
