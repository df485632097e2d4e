"""Run directories: recognised by a marker only relax writes, replaced only where nothing else is lost, and written by
one process at a time.

- **Marker.** :func:`prepare` writes ``.relax-run`` (a small JSON file holding the format version) into every run
  directory it creates, before anything else. A folder is a run directory because it has the marker, never because
  it holds a ``recipe.yaml``. A run of relax 0.1.0 (``recipe.yaml`` and ``checkpoints/``, no marker) is still
  resumed by :func:`reopen`, which adds the marker.
- **Safe overwrite.** ``--overwrite`` replaces only a folder with the marker, and even then removes only what relax
  writes there (:func:`relax_files`: the checkpoints and what ``relax project``/``export`` put beside them, the metrics,
  the plots, ``recipe.yaml``, ``summary.json``, and temporary files of killed writes). Any other file stops it, named,
  before anything is removed; so does an input of the command (e.g. the recipe being read) among the files to remove.
- **One writer.** A run directory has a lock: ``fcntl.flock`` on ``.relax-lock``, held from :func:`prepare` or
  :func:`reopen` until :meth:`RunDir.close` (or the end of the process: the kernel releases it, so ``kill -9`` leaves
  no stale lock). A second process gets :class:`RelaxError` (exit 1) naming the holder's pid.

Example:
    >>> with prepare(Path("runs/tiny"), Path("runs"), "tiny", overwrite=True, inputs={"the recipe": recipe}) as run:
    ...     Trainer(rec, run.path).fit()                   # the lock is held until the block ends
    >>> with reopen(Path("runs/tiny")) as run:             # relax train --resume runs/tiny
    ...     Trainer(rec, run.path, resume=True).fit()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from .._version import __version__
from ..errors import RelaxError
from .files import atomic_write, same_file

try:
    import fcntl
except ImportError:  # not POSIX: no lock (relax is tested on Linux and macOS)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MARKER",
    "LOCK",
    "RUN_FORMAT",
    "RunDir",
    "RunLock",
    "prepare",
    "reopen",
    "check_resumable",
    "lock",
    "is_run_dir",
    "relax_files",
    "recipe_inputs",
]

MARKER = ".relax-run"
LOCK = ".relax-lock"
RUN_FORMAT = "relaxcli/run/1"

#: What relax writes at the top of a run directory (besides ``checkpoints/`` and ``plots/``).
_TOP_FILES = frozenset({MARKER, LOCK, "recipe.yaml", "metrics.jsonl", "metrics.csv", "summary.json"})
#: Checkpoints the trainer writes, and what ``relax project`` / ``relax export`` write beside them by default.
_CHECKPOINT_FILES = frozenset(
    f"{stem}{suffix}"
    for stem in ("last", "best", "best_relaxed")
    for suffix in (".safetensors", ".projected.safetensors", ".relaxed.safetensors", ".projected.pt2")
)
_PLOT_FILES = frozenset({"loss.png", "theta.png", "lie.png"})
_OWN_DIRS = {"checkpoints": _CHECKPOINT_FILES, "plots": _PLOT_FILES}
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # left by a killed atomic write (files.atomic_path)


class RunLock:
    """This process's lock on a run directory (see :func:`lock`); :meth:`release` lets the next process in."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Release the lock (the kernel does it anyway when the process ends, also on ``kill -9``)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # no pid of a finished process left behind
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


class RunDir:
    """A run directory that carries the marker and whose lock this process holds, until :meth:`close` (or the end
    of a ``with`` block)."""

    def __init__(self, path: Path, run_lock: RunLock) -> None:
        self.path, self._lock = path, run_lock

    def close(self) -> None:
        """Release the lock."""
        self._lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that relax created as a run directory (it holds the marker).

    Example:
        >>> is_run_dir("runs/nbody-relaxed-20261122-120000")
        True
    """
    return (Path(path) / MARKER).is_file()


def lock(run_dir: str | os.PathLike) -> RunLock:
    """Take the lock of ``run_dir`` (creating its lock file) without waiting; :class:`RelaxError` naming the holder's
    pid when another process has it. Where the file system has no locks (some network mounts), or off POSIX, the
    run goes ahead unlocked.

    Example:
        >>> held = lock("runs/tiny")      # a second process now gets "... in use by another relax process (pid ...)"
        >>> held.release()
    """
    path = Path(run_dir) / LOCK
    if fcntl is None:
        return RunLock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RelaxError(
            f"run directory {run_dir} is in use by another relax process ({_holder(path)}, which holds "
            f"{path}); wait for it to finish or stop it, or choose another --run-dir. Only one process "
            "at a time trains or resumes a run directory."
        ) from None
    except OSError:  # a file system without locks (some network mounts): run unlocked rather than not at all
        os.close(fd)
        return RunLock(path, None)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RunLock(path, fd)


def _holder(path: Path) -> str:
    """``"pid N"`` of the process holding the lock file ``path`` (which writes its pid right after locking)."""
    for _ in range(20):
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.05)
    return "pid unknown"


def relax_files(run_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The entries of ``run_dir``, split into what relax writes there (removable by ``--overwrite``) and anything
    else (files and folders a user put there, symbolic links). Folders ``checkpoints/`` and ``plots/`` count as
    relax's when everything in them is; their files are listed before them.

    Example:
        >>> mine, other = relax_files("myproject")
        >>> other
        [PosixPath('myproject/thesis.tex'), PosixPath('myproject/data')]
    """
    root = Path(run_dir)
    mine: list[Path] = []
    other: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            other.append(entry)
        elif entry.is_dir() and entry.name in _OWN_DIRS:
            inner = sorted(entry.iterdir())
            bad = [p for p in inner if p.is_symlink() or not p.is_file() or not _owned(p.name, _OWN_DIRS[entry.name])]
            other += bad
            if not bad:
                mine += [*inner, entry]
        elif entry.is_file() and _owned(entry.name, _TOP_FILES):
            mine.append(entry)
        else:
            other.append(entry)
    return mine, other


def _owned(name: str, names: frozenset[str]) -> bool:
    temp = _TEMP.match(name)
    return name in names or (temp is not None and temp["name"] in names)


def prepare(
    run_dir: Path | None,
    runs_root: Path,
    name: str,
    overwrite: bool = False,
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> RunDir:
    """Claim a new run directory: create it (or take an empty one), lock it and write the marker.

    Args:
        run_dir: the ``--run-dir`` given, or None for a fresh ``runs_root/<name>-<time>``.
        runs_root: where fresh run directories go.
        name: the recipe's name.
        overwrite: replace an existing run directory (one with the marker and nothing but relax's files in it).
        inputs: the files the command reads (what each is -> its path); one among the files that ``overwrite``
            would remove is refused.

    Raises:
        RelaxError: the folder is a file, holds other files, is not a run directory, or another process holds it.

    Example:
        >>> with prepare(None, Path("runs"), "nbody-relaxed") as run:
        ...     print(run.path)
        runs/nbody-relaxed-20261122-120000
    """
    if run_dir is None:
        return _claim_fresh(runs_root, name)
    if run_dir.is_symlink() and overwrite:
        raise RelaxError(
            f"--run-dir {run_dir} is a symbolic link (to {os.readlink(run_dir)}); --overwrite replaces "
            f"only a real run directory, so give the directory itself ({run_dir.resolve()})"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RelaxError(f"--run-dir {run_dir} is a file; give a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RelaxError(
            f"cannot create the run directory {run_dir} ({e.strerror or e}); choose another --run-dir"
        ) from None
    names = {p.name for p in run_dir.iterdir()}
    if names and not names & {MARKER, LOCK}:  # a folder relax did not create: never touched, never locked
        if overwrite:
            legacy = (
                " (a run directory of relax 0.1.0 gets the marker when resumed once with 'relax train --resume')"
                if {"recipe.yaml", "checkpoints"} <= names
                else ""
            )
            raise RelaxError(
                f"refusing to replace {run_dir} for --overwrite: it is not a relax run directory (it has "
                f"no {MARKER} marker, which relax writes into every run directory it creates){legacy}; "
                "nothing in it was touched. Choose another --run-dir."
            )
        raise RelaxError(
            f"run directory {run_dir} exists and is not empty; choose another --run-dir, or pass "
            f"--overwrite to replace it (only a run directory relax created, with its {MARKER} marker, "
            "is replaced)"
        )
    held = lock(run_dir)  # names the holder when another process is starting or running here
    try:
        mine, other = relax_files(run_dir)
        if other:
            shown = ", ".join(str(p) for p in other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
            raise RelaxError(
                f"refusing to replace {run_dir}{' for --overwrite' if overwrite else ''}: it holds "
                f"{shown}, which relax did not write there (it replaces only its own checkpoints, "
                "metrics, plots, recipe.yaml and summary.json). Move that out of the way or choose "
                "another --run-dir; nothing was removed."
            )
        existing = [p for p in mine if p.name not in (MARKER, LOCK)]
        if existing and not overwrite:
            raise RelaxError(
                f"run directory {run_dir} exists and is not empty; choose another --run-dir, or pass "
                "--overwrite to replace it"
            )
        for what, path in (inputs or {}).items():
            hit = next((p for p in existing if path is not None and p.is_file() and same_file(p, path)), None)
            if hit is not None:
                raise RelaxError(
                    f"refusing to replace {run_dir} for --overwrite: {hit} is {what}, which this "
                    "command reads, and replacing the run would delete it; copy it out of the run "
                    "directory and pass the copy. Nothing was removed."
                )
        for path in existing:  # files before the folders that hold them
            path.rmdir() if path.is_dir() else path.unlink()
        _write_marker(run_dir)
    except BaseException:
        held.release()
        raise
    return RunDir(run_dir, held)


def _claim_fresh(runs_root: Path, name: str) -> RunDir:
    """A new ``runs_root/<name>-<time>[-k]``, created atomically so two processes never pick the same one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_root.mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        run_dir = runs_root / (f"{name}-{stamp}" if k == 0 else f"{name}-{stamp}-{k}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        held = lock(run_dir)
        try:
            _write_marker(run_dir)
        except BaseException:
            held.release()
            raise
        return RunDir(run_dir, held)
    raise RelaxError(f"could not create a new run directory for {name} under {runs_root}: too many exist already")


def check_resumable(run_dir: Path) -> None:
    """Raise :class:`RelaxError` unless ``run_dir`` is a run directory with its ``recipe.yaml`` (reads only: no lock).

    Example:
        >>> check_resumable(Path("thesis"))
        Traceback (most recent call last):
        relaxcli.errors.RelaxError: thesis is not a run directory: it has no .relax-run marker ...
    """
    if not run_dir.is_dir():
        raise RelaxError(
            f"{run_dir} is not a run directory: "
            + ("it does not exist" if not run_dir.exists() else "it is a file")
            + "; give the folder 'relax train' wrote, e.g. runs/<name>-<time>"
        )
    legacy = (run_dir / "recipe.yaml").is_file() and (
        (run_dir / "checkpoints").is_dir() or (run_dir / "metrics.jsonl").is_file()
    )
    if not is_run_dir(run_dir) and not legacy:
        raise RelaxError(
            f"{run_dir} is not a run directory: it has no {MARKER} marker (nor, as runs of relax 0.1.0 "
            "do, a recipe.yaml beside checkpoints/); give the folder 'relax train' wrote"
        )
    if not (run_dir / "recipe.yaml").is_file():
        raise RelaxError(
            f"{run_dir} is not a run directory: it has no recipe.yaml (it was stopped before it began "
            f"training; start it again with 'relax train RECIPE --run-dir {run_dir} --overwrite')"
        )


def recipe_inputs(recipe_path: str | os.PathLike, recipe: Mapping[str, Any]) -> dict[str, Path]:
    """The files a recipe makes ``relax train`` read: the recipe itself and every string value of it that names an
    existing file (``model._weights_``, a program's ``path``, ...), as ``what -> path`` for :func:`prepare`.

    Example:
        >>> recipe_inputs("run/recipe.yaml", {"model": {"_weights_": "init.safetensors"}})
        {'the recipe': PosixPath('run/recipe.yaml'), "the recipe's model._weights_": PosixPath('init.safetensors')}
    """
    found = {"the recipe": Path(recipe_path)}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and value and len(value) < 4096:
            try:
                if Path(value).is_file():
                    found[f"the recipe's {key}"] = Path(value)
            except OSError:
                pass

    walk(recipe, "")
    return found


def reopen(run_dir: Path) -> RunDir:
    """Claim an existing run directory to resume it: lock it, and add the marker to a run of relax 0.1.0.

    Raises:
        RelaxError: ``run_dir`` is not a run directory, or another process holds it.

    Example:
        >>> with reopen(Path("runs/tiny")) as run:
        ...     Trainer(load_recipe(run.path / "recipe.yaml"), run.path, resume=True).fit()
    """
    check_resumable(run_dir)
    held = lock(run_dir)
    try:
        if not is_run_dir(run_dir):
            _write_marker(run_dir)
    except BaseException:
        held.release()
        raise
    return RunDir(run_dir, held)


def _write_marker(run_dir: Path) -> None:
    marker: dict[str, Any] = {"format": RUN_FORMAT, "relaxcli": __version__}
    atomic_write(run_dir / MARKER, json.dumps(marker) + "\n")
