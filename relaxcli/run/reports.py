"""Reports of a run, from its metrics log (:mod:`.runlog`): ``metrics.csv``, the plots and the headline summary.

Everything here is generic over keys: unknown keys are carried through the CSV and ignored by the plots.

Example:
    >>> records = MetricsLog.read(run_dir / "metrics.jsonl")
    >>> write_csv(records, run_dir / "metrics.csv")
    >>> write_plots(records, run_dir / "plots")       # [.../loss.png, .../theta.png, .../lie.png]
    >>> summarize(records)["best_eval"]["val_projected"]
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .files import atomic_write
from .runlog import SITE_KEYS, Record, sanitize, symbol

__all__ = ["flatten_record", "write_csv", "write_plots", "write_comparison", "summarize"]

#: Above this many sites, plot legends move outside the axes in a small font.
_MANY_SITES = 8


def flatten_record(record: Mapping[str, Any]) -> Record:
    """A flat copy of ``record``: ``sites`` becomes ``site/<path>/<key>`` columns, another nested mapping ``m``
    becomes ``m/<key>`` columns, and lists become JSON text. Key order is kept."""
    flat: Record = {}
    for key, value in record.items():
        if key == "sites" and isinstance(value, Mapping):
            for site, terms in value.items():
                if isinstance(terms, Mapping):
                    for name, v in terms.items():
                        flat[f"site/{site}/{name}"] = _cell(v)
                else:
                    flat[f"site/{site}"] = _cell(terms)
        elif isinstance(value, Mapping):
            for name, v in flatten_record(value).items():
                flat[f"{key}/{name}"] = v
        else:
            flat[key] = _cell(value)
    return flat


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(sanitize(value))
    return value


def write_csv(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write one CSV row per record, atomically; returns the path.

    Columns are the union of the (flattened, see :func:`flatten_record`) keys in first-seen order. A key a record
    lacks, ``None`` and NaN are empty cells; numbers are written with ``str`` (round-trip exact for floats),
    booleans as ``True``/``False``.
    """
    rows = [flatten_record(r) for r in records]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    path = Path(path)
    atomic_write(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------------------------------------------
# Series extraction
# ----------------------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (missing, null, NaN, non-numeric, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _of_kind(records: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("kind") == kind]


def _series(records: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of ``key`` over ``records``, sorted by step; a repeated step keeps its last value."""
    by_step: dict[float, float] = {}
    for r in records:
        step, value = _number(r.get("step")), _number(r.get(key))
        if step is not None and value is not None:
            by_step[step] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _site_series(evals: Sequence[Mapping[str, Any]], key: str) -> dict[str, tuple[list[float], list[float]]]:
    """Per site (in first-seen order), ``(steps, values)`` of the site term ``key`` over the eval records."""
    by_site: dict[str, dict[float, float]] = {}
    for r in evals:
        step, sites = _number(r.get("step")), r.get("sites")
        if step is None or not isinstance(sites, Mapping):
            continue
        for site, terms in sites.items():
            if not isinstance(terms, Mapping):
                continue
            value = _number(terms.get(key))
            if value is not None:
                by_site.setdefault(str(site), {})[step] = value
    return {site: (sorted(pts), [pts[s] for s in sorted(pts)]) for site, pts in by_site.items()}


def _best_eval(records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The eval record with the lowest ``val_projected`` (the earliest on a tie), or ``None``."""
    best, best_value = None, math.inf
    for r in _of_kind(records, "eval"):
        value = _number(r.get("val_projected"))
        if value is not None and value < best_value:
            best, best_value = r, value
    return best


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def _new_figure(n_rows: int, width: float = 7.5, height_per_row: float = 3.2) -> tuple[Any, list[Any]]:
    """A figure with ``n_rows`` stacked axes sharing x, rendered by Agg without touching pyplot's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height_per_row * n_rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    return fig, list(axes)


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    return path


def _log_y(ax: Any, values: Iterable[float]) -> None:
    """Log y scale when some value is positive (non-positive points are masked), linear otherwise; within less than
    two decades the 2x and 5x ticks are labelled too, so the axis always has a few numbers."""
    positive = [v for v in values if v > 0]
    if not positive:
        return
    from matplotlib import ticker

    ax.set_yscale("log", nonpositive="mask")
    if max(positive) / min(positive) < 100:
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))


def _site_legend(ax: Any, n_sites: int) -> None:
    if n_sites > _MANY_SITES:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="x-small",
            frameon=False,
            title="site",
            title_fontsize="small",
        )
    elif n_sites:
        ax.legend(fontsize="small", title="site", title_fontsize="small")


def _site_styles(n: int) -> list[dict[str, Any]]:
    """Colour and line style per site: ten distinct colours, then the same colours dashed, dotted, ..."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    dashes = ["-", "--", ":", "-."]
    return [{"color": cmap(i % 10), "ls": dashes[(i // 10) % len(dashes)]} for i in range(n)]


def _loss_name(records: Iterable[Mapping[str, Any]]) -> str:
    """The recipe's loss (``MSELoss``), as the test record names it; ``loss`` for a log without one."""
    names = {str(r["loss_fn"]) for r in _of_kind(records, "test") if r.get("loss_fn")}
    return names.pop() if len(names) == 1 else "loss"


def _plot_loss(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    train, evals, tests = (_of_kind(records, k) for k in ("train", "eval", "test"))
    task = _series(train, "task")
    total = _series(train, "loss")
    projected = _series(evals, "val_projected")
    relaxed = _series(evals, "val_relaxed")
    test_projected = _series(tests, "test_projected")
    test_relaxed = _series(tests, "test_relaxed")
    has_train, has_val = bool(task[0] or total[0]), bool(projected[0] or relaxed[0] or test_projected[0])
    if not (has_train or has_val):
        return None

    fig, axes = _new_figure(int(has_train) + int(has_val))
    fig.suptitle("Loss")
    if has_train:
        ax = axes[0]
        if task[0]:
            ax.plot(*task, lw=1.2, color="C0", label="task loss")
        relaxed_run = any(_number(r.get("reg")) is not None for r in train)
        if total[0] and (relaxed_run or not task[0]):
            ax.plot(
                *total,
                lw=1.0,
                color="C7",
                alpha=0.7,
                ls="--",
                label="total (task + regularisers)" if relaxed_run else "total loss",
            )
        _log_y(ax, task[1] + total[1])
        ax.set_title("Training")
        ax.set_ylabel("training loss")
        ax.legend(fontsize="small")
    if has_val:
        ax = axes[-1]
        if projected[0]:
            ax.plot(*projected, marker="o", ms=3, lw=1.2, color="C1", label="projected (θ=0)")
        if relaxed[0]:
            ax.plot(*relaxed, marker="o", ms=3, lw=1.2, color="C2", label="relaxed")
        if test_projected[0]:  # drawn larger and above the relaxed marker: equal values stay visible
            ax.scatter(
                *test_projected,
                marker="o",
                s=110,
                facecolor="none",
                edgecolor="C1",
                lw=2,
                zorder=5,
                label="test, projected (θ=0)",
            )
        if test_relaxed[0]:
            ax.scatter(*test_relaxed, marker="X", s=45, color="C2", edgecolor="k", zorder=4, label="test, relaxed")
        best = _best_eval(records)
        if best is not None:
            bx, by = float(best["step"]), float(best["val_projected"])
            ax.scatter(
                [bx],
                [by],
                marker="*",
                s=200,
                color="gold",
                edgecolor="k",
                zorder=5,
                label=f"best (step {int(bx)}: {by:.4g})",
            )
        _log_y(ax, projected[1] + relaxed[1] + test_projected[1] + test_relaxed[1])
        ax.set_title("Validation and test")
        ax.set_ylabel(_loss_name(records))
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    return _save(fig, path)


def _plot_theta(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    theta = _series(_of_kind(records, "train"), "theta")
    source = "train"
    if not theta[0]:  # a log with only eval lines
        theta, source = _series(_of_kind(records, "eval"), "theta"), "eval"
    evals = _of_kind(records, "eval")
    learnt = [
        k
        for k in dict.fromkeys(k for r in evals for v in (r.get("sites") or {}).values() for k in v)
        if k not in SITE_KEYS
    ]  # a learnt schedule's own per-site numbers (ACE: gamma, lambda, u)
    per_site = [(key, f"Per-site {symbol(key)}", series) for key in learnt if (series := _site_series(evals, key))]
    if per_site:  # a learnt θ (ACE's γ) is shown per site; the mean-θ panel adds nothing
        theta = ([], [])
    if not (theta[0] or per_site):
        return None

    fig, axes = _new_figure(int(bool(theta[0])) + len(per_site))
    fig.suptitle("Relaxation parameters")
    if theta[0]:
        ax = axes[0]
        ax.plot(*theta, lw=1.5, color="C3", marker="o" if source == "eval" else None, ms=3)
        ax.set_title("Relaxation strength θ" + (" (from eval lines)" if source == "eval" else ""))
        ax.set_ylabel("θ")
    for ax, (key, title, series) in zip(axes[int(bool(theta[0])) :], per_site):
        for (site, (steps, values)), style in zip(series.items(), _site_styles(len(series))):
            ax.plot(steps, values, marker="o", ms=3, lw=1.0, label=site, **style)
        ax.set_title(title)
        ax.set_ylabel(symbol(key))
        _site_legend(ax, len(series))
    axes[-1].set_xlabel("step")
    return _save(fig, path)


def _plot_lie(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per site, what its branch adds to the model's equivariance violation: θ times the data-free Lie-derivative
    norm ``‖W dρ_in(A) − dρ_out(A) W‖_F`` summed over generators (0 once θ is 0: the projected model)."""
    evals = _of_kind(records, "eval")
    lies, thetas = _site_series(evals, "lie"), _site_series(evals, "theta")
    if not lies:
        return None
    scaled = {
        site: (steps, [abs(t) * v for t, v in zip(thetas.get(site, (steps, [1.0] * len(values)))[1], values)])
        for site, (steps, values) in lies.items()
    }
    fig, (ax,) = _new_figure(1, width=7.5 + (2.5 if len(lies) > _MANY_SITES else 0.0), height_per_row=4.0)
    for (site, (steps, values)), style in zip(scaled.items(), _site_styles(len(scaled))):
        ax.plot(steps, values, marker="o", ms=3, lw=1.0, label=site, **style)
    _log_y(ax, [v for _, values in scaled.values() for v in values])
    ax.set_title("Equivariance violation per site: |θ|·‖W dρ_in(A) − dρ_out(A) W‖_F (0 at θ = 0)", fontsize="medium")
    ax.set_xlabel("step")
    ax.set_ylabel("|θ| · Lie-derivative norm")
    _site_legend(ax, len(scaled))
    return _save(fig, path)


def write_plots(records: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``loss.png``, ``theta.png`` and ``lie.png`` to ``out_dir`` (atomically); returns the paths written.

    - ``loss.png``: training task loss vs step (log y; plus the total loss for a relaxed run) and the validation
      metric of the projected model ("projected (θ=0)") and the relaxed model vs step, the best eval starred and
      test results marked;
    - ``theta.png``: θ vs step from the train lines; for ACE runs instead per-site γ, λ (and u) from the eval lines;
    - ``lie.png``: per-site Lie-derivative norm vs step from the eval lines (log y).

    A plot whose data is missing (e.g. ``theta.png`` for a standard run) is skipped and not written; a stale file
    of that name from an earlier call is left alone. Uses matplotlib's Agg canvas directly, never pyplot, so the
    caller's backend is untouched.
    """
    out = Path(out_dir)
    written: list[Path] = []
    for name, plot in (("loss.png", _plot_loss), ("theta.png", _plot_theta), ("lie.png", _plot_lie)):
        result = plot(records, out / name)
        if result is not None:
            written.append(result)
    return written


def write_comparison(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], path: str | os.PathLike) -> Path:
    """One PNG overlaying several runs (a relaxed run and its standard twin, say): per run the validation loss of
    the projected model (solid) and of the relaxed model (dashed) against the step, its test result (a circle), and
    the training task loss in a panel below. ``runs`` is ``[(label, records), ...]``.

    Example:
        >>> write_comparison([(d.name, MetricsLog.read(d / "metrics.jsonl")) for d in run_dirs], "compare.png")
    """
    fig, (val_ax, train_ax) = _new_figure(2, width=8.5)
    fig.suptitle("Runs compared")
    values: list[float] = []
    train_values: list[float] = []
    for (label, records), style in zip(runs, _site_styles(len(runs))):
        color = style["color"]
        evals, tests = _of_kind(records, "eval"), _of_kind(records, "test")
        projected, relaxed = _series(evals, "val_projected"), _series(evals, "val_relaxed")
        val_ax.plot(*projected, lw=1.4, marker="o", ms=3, color=color, label=f"{label}: projected (θ=0)")
        if relaxed[0]:
            val_ax.plot(*relaxed, lw=1.0, ls="--", color=color, alpha=0.8, label=f"{label}: relaxed")
        test = _series(tests, "test_projected")
        if test[0]:
            val_ax.scatter(
                *test,
                marker="o",
                s=90,
                facecolor="none",
                edgecolor=color,
                lw=2,
                zorder=5,
                label=f"{label}: test {test[1][-1]:.4g}",
            )
        task = _series(_of_kind(records, "train"), "task")
        train_ax.plot(*task, lw=1.0, color=color, label=label)
        values += projected[1] + relaxed[1] + test[1]
        train_values += task[1]
    _log_y(val_ax, values)
    _log_y(train_ax, train_values)
    val_ax.set_title("Validation and test")
    val_ax.set_ylabel(_loss_name([r for _, records in runs for r in records]))
    val_ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    train_ax.set_title("Training task loss")
    train_ax.set_ylabel("loss")
    train_ax.set_xlabel("step")
    train_ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The headline numbers of a run.

    Returns a dict with:

    - ``best_eval``: the eval record with the lowest ``val_projected`` (earliest on a tie), or ``None``;
    - ``test``: the last test record, or ``None``;
    - ``final_theta``: the last non-null θ of the train lines (of the eval lines if no train line has one), or
      ``None`` for a standard run;
    - ``last_step``: the largest step in any record, or ``None``;
    - ``counts``: the number of records of each kind.
    """
    tests = _of_kind(records, "test")
    theta = _series(_of_kind(records, "train"), "theta")[1] or _series(_of_kind(records, "eval"), "theta")[1]
    steps = [s for s in (_number(r.get("step")) for r in records) if s is not None]
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("kind"))] = counts.get(str(r.get("kind")), 0) + 1
    best = _best_eval(records)
    return {
        "best_eval": dict(best) if best is not None else None,
        "test": dict(tests[-1]) if tests else None,
        "final_theta": theta[-1] if theta else None,
        "last_step": int(max(steps)) if steps else None,
        "counts": counts,
    }
