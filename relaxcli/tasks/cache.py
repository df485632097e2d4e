"""The on-disk cache of generated task data: one ``.npz`` per split, keyed by a hash of every parameter.

Example:
    >>> arrays, from_cache, path = cached(cache_dir, "nbody", "train", params, KEYS, lambda: simulate(...))
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..run.files import atomic_path

__all__ = ["SPLITS", "default_cache_dir", "cache_folder", "split_sizes", "cached", "read_npz", "write_npz"]

#: Split names, in the order of their random-stream ids.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def default_cache_dir() -> Path:
    """``$RELAX_CACHE`` if set, else ``~/.cache/relaxcli``."""
    env = os.environ.get("RELAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "relaxcli"


def read_npz(path: Path, meta: str, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays ``keys``, or ``None`` if the file is unreadable, incomplete or for other parameters."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["meta"]) != meta:
                return None
            return {key: npz[key] for key in keys}
    except (OSError, KeyError, ValueError):
        return None


def write_npz(path: Path, arrays: dict[str, np.ndarray], meta: str, keys: tuple[str, ...]) -> None:
    """Write ``arrays[keys]`` (plus ``meta``) atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        payload: dict[str, Any] = {"meta": np.array(meta), **{key: arrays[key] for key in keys}}
        np.savez(fh, **payload)


def cache_folder(cache_dir: str | os.PathLike[str] | None, cache: bool) -> Path | None:
    """The cache folder of a task: ``cache_dir``, else :func:`default_cache_dir`; None when caching is off."""
    if not cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def split_sizes(train: int, val: int, test: int) -> dict[str, int]:
    """``{"train": train, "val": val, "test": test}`` as ints; a ValueError naming a negative one."""
    sizes = {"train": int(train), "val": int(val), "test": int(test)}
    for split, size in sizes.items():
        if size < 0:
            raise ValueError(f"{split} must be >= 0, got {size}")
    return sizes


def cached(
    folder: Path | None,
    prefix: str,
    split: str,
    params: dict[str, Any],
    keys: tuple[str, ...],
    make: Callable[[], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], bool, Path | None]:
    """The arrays of one split: read from ``folder/<prefix>-<split>-<hash of params>.npz`` when it holds them for
    these ``params``, else made by ``make()`` and written there. Returns the arrays, whether they came from the
    cache, and the cache file (None when ``folder`` is None: caching off)."""
    meta = json.dumps(params, sort_keys=True)
    path = None
    if folder is not None:
        path = folder / f"{prefix}-{split}-{hashlib.sha256(meta.encode()).hexdigest()[:20]}.npz"
        arrays = read_npz(path, meta, keys) if path.is_file() else None
        if arrays is not None:
            return arrays, True, path
    arrays = make()
    if path is not None:
        write_npz(path, arrays, meta, keys)
    return arrays, False, path
