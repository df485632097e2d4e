"""Training metrics: the append-only ``metrics.jsonl`` log of a run, and its CSV export, plots and summary.

A run directory holds ``metrics.jsonl``, one JSON object per line, told apart by ``"kind"``:

- ``train``: ``step``, ``epoch``, ``loss``, ``task``, ``lr``, ``time`` and, for a relaxed run, ``reg``,
  ``projection``, ``lie``, ``discrete``, ``theta`` (absent or null for a standard run);
- ``eval``: ``step``, ``epoch``, ``val_projected``, ``val_relaxed``, ``theta``, ``best`` and ``sites``, a mapping
  from site path to per-site numbers (``theta``, ``weight_norm``, ``lie``, ``discrete``, maybe ``gamma``, ...);
- ``test``: ``step``, ``epoch``, ``val_projected``, ``test_projected``, ``test_relaxed``.

Everything here is generic over keys: unknown keys are carried through the CSV and ignored by the plots.

Each line is flushed and fsynced as it is appended, so a killed run loses at most the line being written, and
:meth:`MetricsLog.read` skips such a truncated final line. When a run resumes from a checkpoint taken after
line ``n``, :meth:`MetricsLog.truncate` drops the lines written after it. Other files are written atomically
(temporary file in the same folder, then ``os.replace``).

Example:
    >>> log = MetricsLog(run_dir / "metrics.jsonl")
    >>> log.append({"kind": "train", "step": 0, "epoch": 0, "loss": 1.3, "task": 1.2, "theta": 0.5})
    >>> n = MetricsLog.count_lines(log.path)          # store n in the checkpoint; on resume:
    >>> MetricsLog.truncate(log.path, n)
    >>> records = MetricsLog.read(log.path)
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
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "Record", "flatten_record", "write_csv", "write_plots", "summarize"]

Record = dict[str, Any]

#: Above this many sites, plot legends move outside the axes in a small font.
_MANY_SITES = 8


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes and JSON sanitising
# ----------------------------------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Best-effort fsync of a folder, so a rename in it survives a crash (not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _sanitize(value: Any) -> Any:
    """A JSON-safe copy of ``value``: NaN and ±inf become ``None``, 0-d numpy/torch scalars become Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and tensors
    if callable(item):
        try:
            return _sanitize(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"cannot write a {type(value).__name__} to the metrics log: {value!r}")


# ----------------------------------------------------------------------------------------------------------------
# The log
# ----------------------------------------------------------------------------------------------------------------


class MetricsLog:
    """The append-only JSON-lines metrics log of one run.

    The file is opened for each :meth:`append` and closed again, so nothing is held open: :meth:`truncate`
    (which replaces the file) is safe to call at any time, and there is nothing to close.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()

    def append(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line, flushed and fsynced; NaN and ±inf are written as ``null``."""
        line = json.dumps(_sanitize(record), allow_nan=False, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _repair_tail(self) -> None:
        """Make the file end with a newline, so new lines are not glued onto one cut short by a kill.

        An unterminated last line that is valid JSON is kept (it only lost its newline); one that is not is cut off,
        exactly as :meth:`read` would skip it.
        """
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Find the start of the unterminated last line.
            start, block = size, 4096
            while start > 0:
                lo = max(0, start - block)
                f.seek(lo)
                chunk = f.read(start - lo)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    start = lo + nl + 1
                    break
                start = lo
            f.seek(start)
            tail = f.read()
            if _parses(tail.decode("utf-8", errors="replace")):
                f.seek(size)
                f.write(b"\n")
            else:
                f.truncate(start)
            f.flush()
            os.fsync(f.fileno())

    # -- reading -----------------------------------------------------------------------------------------------

    @staticmethod
    def _lines(path: str | os.PathLike) -> list[str]:
        """The complete, non-blank lines of the log, without a truncated (unparseable) final line."""
        path = Path(path)
        if not path.exists():
            return []
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if lines and not _parses(lines[-1]):
            lines.pop()
        return lines

    @staticmethod
    def read(path: str | os.PathLike) -> list[Record]:
        """All records of the log at ``path``, in order; a missing file reads as no records.

        A final line that is not valid JSON (cut short by a kill) is skipped; an invalid line anywhere else
        raises ``ValueError``, since that is corruption rather than an interrupted write.
        """
        records: list[Record] = []
        for number, line in enumerate(MetricsLog._lines(path), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {number} is not valid JSON: {e}") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            records.append(record)
        return records

    @staticmethod
    def count_lines(path: str | os.PathLike) -> int:
        """The number of complete records in the log (what :meth:`read` returns); 0 for a missing file."""
        return len(MetricsLog._lines(path))

    @staticmethod
    def truncate(path: str | os.PathLike, n_lines: int) -> int:
        """Keep only the first ``n_lines`` records of the log, atomically; returns the number kept.

        Used on resume: the checkpoint stores :meth:`count_lines` at the time it was taken, and the lines written
        after it are dropped. A log with fewer lines is left as it is (minus any truncated final line), so check the
        returned count if a shortfall matters.
        """
        if n_lines < 0:
            raise ValueError(f"n_lines must be >= 0, got {n_lines}")
        path = Path(path)
        if not path.exists():
            return 0
        kept = MetricsLog._lines(path)[:n_lines]
        _atomic_write(path, "".join(line + "\n" for line in kept))
        return len(kept)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------------------------


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
        return json.dumps(_sanitize(value))
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
    _atomic_write(path, buf.getvalue())
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
    _atomic_write(path, buf.getvalue())
    return path


def _log_y(ax: Any, values: Iterable[float]) -> None:
    """Log y scale when some value is positive (non-positive points are masked), linear otherwise."""
    if any(v > 0 for v in values):
        ax.set_yscale("log", nonpositive="mask")


def _site_legend(ax: Any, n_sites: int) -> None:
    if n_sites > _MANY_SITES:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", frameon=False,
                  title="site", title_fontsize="small")
    elif n_sites:
        ax.legend(fontsize="small", title="site", title_fontsize="small")


def _site_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


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
            ax.plot(*total, lw=1.0, color="C7", alpha=0.7, ls="--",
                    label="total (task + regularisers)" if relaxed_run else "total loss")
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
        if test_projected[0]:
            ax.scatter(*test_projected, marker="X", s=60, color="C1", edgecolor="k", zorder=4,
                       label="test, projected (θ=0)")
        if test_relaxed[0]:
            ax.scatter(*test_relaxed, marker="X", s=60, color="C2", edgecolor="k", zorder=4, label="test, relaxed")
        best = _best_eval(records)
        if best is not None:
            bx, by = float(best["step"]), float(best["val_projected"])
            ax.scatter([bx], [by], marker="*", s=200, color="gold", edgecolor="k", zorder=5,
                       label=f"best (step {int(bx)}: {by:.4g})")
        _log_y(ax, projected[1] + relaxed[1] + test_projected[1] + test_relaxed[1])
        ax.set_title("Validation")
        ax.set_ylabel("validation metric")
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    return _save(fig, path)


def _plot_theta(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    theta = _series(_of_kind(records, "train"), "theta")
    source = "train"
    if not theta[0]:  # a log with only eval lines
        theta, source = _series(_of_kind(records, "eval"), "theta"), "eval"
    evals = _of_kind(records, "eval")
    per_site = [(key, title, series) for key, title in (("gamma", "Per-site γ"), ("lambda", "Per-site dual λ"),
                                                        ("u", "Per-site slack u"))
                if (series := _site_series(evals, key))]
    if per_site:  # ACE: γ is the site's θ, shown per site; the mean-θ panel adds nothing
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
    for ax, (key, title, series) in zip(axes[int(bool(theta[0])):], per_site):
        for (site, (steps, values)), color in zip(series.items(), _site_colors(len(series))):
            ax.plot(steps, values, marker="o", ms=3, lw=1.0, color=color, label=site)
        ax.set_title(title)
        ax.set_ylabel({"gamma": "γ", "lambda": "λ", "u": "u"}[key])
        _site_legend(ax, len(series))
    axes[-1].set_xlabel("step")
    return _save(fig, path)


def _plot_lie(records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    lies = _site_series(_of_kind(records, "eval"), "lie")
    if not lies:
        return None
    fig, (ax,) = _new_figure(1, width=7.5 + (2.5 if len(lies) > _MANY_SITES else 0.0), height_per_row=4.0)
    for (site, (steps, values)), color in zip(lies.items(), _site_colors(len(lies))):
        ax.plot(steps, values, marker="o", ms=3, lw=1.0, color=color, label=site)
    _log_y(ax, [v for _, values in lies.values() for v in values])
    ax.set_title("Equivariance violation per site (Lie-derivative norm)")
    ax.set_xlabel("step")
    ax.set_ylabel("‖Lie derivative‖")
    _site_legend(ax, len(lies))
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
