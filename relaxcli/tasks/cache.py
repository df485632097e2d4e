"""The on-disk cache of generated task data: one ``.npz`` per split, keyed by a hash of every parameter.

Example:
    >>> arrays = read_npz(path, meta, keys) or generate()      # None: missing, unreadable or other parameters
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..run.files import atomic_path

__all__ = ["SPLITS", "default_cache_dir", "read_npz", "write_npz"]

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
