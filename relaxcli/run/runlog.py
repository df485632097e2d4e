"""The append-only ``metrics.jsonl`` log of a run: one JSON object per line, told apart by ``"kind"``.

- ``train``: ``step``, ``epoch``, ``loss``, ``task``, ``lr``, ``time`` and, for a relaxed run, ``reg``,
  ``projection``, ``lie``, ``discrete``, ``theta`` (absent or null for a standard run);
- ``eval``: ``step``, ``epoch``, ``val_projected``, ``val_relaxed``, ``theta``, ``best`` and ``sites``, a mapping
  from site path to per-site numbers (``theta``, ``weight_norm``, ``lie``, ``discrete``, and the schedule's own,
  e.g. ACE's ``gamma``, ``lambda``, ``u``);
- ``test``: ``step``, ``epoch``, ``val_projected``, ``test_projected``, ``test_relaxed``.

Each line is flushed and fsynced as it is appended, so a killed run loses at most the line being written, and
:meth:`MetricsLog.read` skips such a truncated final line. When a run resumes from a checkpoint taken after line
``n``, :meth:`MetricsLog.truncate` drops the lines written after it. Lines are strict JSON: NaN and ±inf are written
as ``null``, and the line's ``"null_reasons"`` says which numbers they were (:func:`strict_json`).

Example:
    >>> log = MetricsLog(run_dir / "metrics.jsonl")
    >>> log.append({"kind": "train", "step": 0, "epoch": 0, "loss": 1.3, "task": 1.2, "theta": 0.5})
    >>> n = MetricsLog.count_lines(log.path)          # store n in the checkpoint; on resume:
    >>> MetricsLog.truncate(log.path, n)
    >>> records = MetricsLog.read(log.path)
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import atomic_write

__all__ = ["MetricsLog", "Record", "SITE_KEYS", "NULL_REASONS", "sanitize", "strict_json", "symbol"]

Record = dict[str, Any]

#: The per-site numbers of every relaxed run's eval lines; a learnt schedule adds its own beside them.
SITE_KEYS = ("theta", "weight_norm", "lie", "discrete")
#: The key under which strict JSON output says why a number is ``null`` (see :func:`strict_json`).
NULL_REASONS = "null_reasons"


def symbol(key: str) -> str:
    """How a logged key is shown: ``gamma`` -> ``γ``, ``theta`` -> ``θ`` (a Greek letter's name as the letter);
    any other key as it is."""
    for name in (key, key.replace("lambda", "lamda")):  # Unicode spells it LAMDA
        try:
            return unicodedata.lookup(f"GREEK SMALL LETTER {name.upper()}")
        except KeyError:
            pass
    return key


def sanitize(value: Any, reasons: dict[str, str] | None = None, _path: str = "") -> Any:
    """A JSON-safe copy of ``value``: NaN and ±inf become ``None``, 0-d numpy/torch scalars become Python numbers.

    With ``reasons``, each number replaced by ``None`` is recorded there: its ``/``-separated path (mapping keys and
    list indices) -> why, e.g. ``{"sites/layers.0.tp/lie": "not finite: nan"}``.

    Example:
        >>> why = {}
        >>> sanitize({"loss": float("nan"), "step": 3}, why), why
        ({'loss': None, 'step': 3}, {'loss': 'not finite: nan'})
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if reasons is not None:
            reasons[_path] = f"not finite: {value}"
        return None
    if isinstance(value, Mapping):
        return {str(k): sanitize(v, reasons, f"{_path}/{k}" if _path else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v, reasons, f"{_path}/{i}" if _path else str(i)) for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and tensors
    if callable(item):
        try:
            return sanitize(item(), reasons, _path)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}")


def strict_json(value: Any, **kwargs: Any) -> str:
    """``value`` as strict JSON (never ``NaN`` or ``Infinity``, which no JSON parser has to accept): a number that is
    not finite becomes ``null``, and when ``value`` is a mapping its ``"null_reasons"`` entry maps the path of each such
    null to why (see :func:`sanitize`). ``kwargs`` go to :func:`json.dumps`.

    Example:
        >>> strict_json({"val_projected": float("inf"), "epoch": 2})
        '{"val_projected": null, "epoch": 2, "null_reasons": {"val_projected": "not finite: inf"}}'
    """
    reasons: dict[str, str] = {}
    clean = sanitize(value, reasons)
    if reasons and isinstance(clean, dict):
        known = clean.get(NULL_REASONS)
        clean[NULL_REASONS] = {**(known if isinstance(known, dict) else {}), **reasons}
    return json.dumps(clean, allow_nan=False, **kwargs)


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
        """Append ``record`` as one JSON line, flushed and fsynced; NaN and ±inf are written as ``null``, with the
        reason under ``"null_reasons"`` (see :func:`strict_json`)."""
        line = strict_json(record, ensure_ascii=False) + "\n"
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
        atomic_write(path, "".join(line + "\n" for line in kept))
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
