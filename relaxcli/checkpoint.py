"""Checkpoints: safetensors files whose metadata holds the recipe, so a checkpoint alone is enough to rebuild a model.

Two kinds, told apart by the ``format`` metadata key:

- **relaxed** (``relaxcli/relaxed/1``, written by the trainer): tensors ``model.<key>`` (the user's ``state_dict``),
  ``branches.<key>`` (branch weights and θ) and, in ``last`` checkpoints, the trainer state needed to resume
  (``optimizer.*``, ``scheduler.*``, ``schedule.*``, ``rng.*``; their non-tensor parts as JSON in the metadata).
- **projected** (``relaxcli/projected/1``, written by ``relax project``): exactly the keys of the user's
  ``state_dict``, loadable with ``load_state_dict(strict=True)``; metadata names the model component and arguments.

Nothing here unpickles: tensors come from safetensors, the rest from JSON. Every write is atomic (temp file, fsync,
rename), so a killed process leaves either the old file or the new one.

Example:
    >>> save_checkpoint("last.safetensors", {"model.w": w}, {"format": RELAXED, "recipe": "{...}"})
    >>> ckpt = load_checkpoint("last.safetensors"); ckpt.model_state()["w"]
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from .errors import RelaxError
from .recipe import Recipe

__all__ = ["RELAXED", "PROJECTED", "Checkpoint", "save_checkpoint", "load_checkpoint", "atomic_write",
           "flatten_state", "unflatten_state", "versions"]

RELAXED = "relaxcli/relaxed/1"
PROJECTED = "relaxcli/projected/1"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint."""
    import e3nn

    from . import __version__

    return {"relaxcli": __version__, "torch": torch.__version__, "e3nn": e3nn.__version__}


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flatten_state(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tensors, numbers) into tensors keyed ``prefix.<path>`` and a JSON
    skeleton in which each tensor is replaced by ``{"__tensor__": key}``."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(x, dict):
            return {"__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in
                                 enumerate(x.items())]}
        if isinstance(x, (list, tuple)):
            return {"__list__" if isinstance(x, list) else "__tuple__": [walk(v, f"{path}.{i}")
                                                                          for i, v in enumerate(x)]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} in a checkpoint (at {path})")

    return tensors, walk(obj, prefix)


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [unflatten_state(v, tensors) for v in skeleton["__list__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    return skeleton


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write a safetensors file; metadata values that are not strings are stored as JSON."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    atomic_write(path, safetensors.torch.save(plain, metadata=meta))


@dataclass
class Checkpoint:
    """A loaded checkpoint: its tensors, its metadata and (when present) the recipe it was trained from."""

    path: Path
    kind: str  # "relaxed" or "projected"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    recipe: Recipe | None

    def json(self, key: str, default: Any = None) -> Any:
        """A metadata entry parsed as JSON."""
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    def model_state(self) -> dict[str, torch.Tensor]:
        """The user's ``state_dict``."""
        return self.section("model") if self.kind == "relaxed" else dict(self.tensors)

    def branch_state(self) -> dict[str, torch.Tensor]:
        return self.section("branches") if self.kind == "relaxed" else {}


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a relaxed or projected checkpoint; a clear :class:`RelaxError` for anything else."""
    p = Path(path)
    if not p.exists():
        raise RelaxError(f"checkpoint {p} does not exist; pass a .safetensors file written by 'relax train' "
                         "(runs/<name>-<time>/checkpoints/best.safetensors) or by 'relax project'")
    if p.is_dir():
        raise RelaxError(f"{p} is a directory; pass a checkpoint file such as {p / 'checkpoints' / 'best.safetensors'}")
    try:
        with safetensors.safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise RelaxError(f"{p} is not a readable safetensors checkpoint ({type(e).__name__}: {e}); it may be "
                         "truncated or corrupted. Use another checkpoint (e.g. checkpoints/last.safetensors).") \
            from None
    fmt = metadata.get("format")
    if fmt not in (RELAXED, PROJECTED):
        raise RelaxError(f"{p} is a safetensors file but not a relax checkpoint (metadata 'format' is {fmt!r}, "
                         f"expected {RELAXED!r} or {PROJECTED!r})")
    recipe = None
    if "recipe" in metadata:
        try:
            recipe = Recipe.from_dict(json.loads(metadata["recipe"]), source=f"{p} (stored recipe)")
        except json.JSONDecodeError as e:
            raise RelaxError(f"{p}: the stored recipe is not valid JSON ({e}); the checkpoint is damaged") from None
    return Checkpoint(p, "relaxed" if fmt == RELAXED else "projected", tensors, metadata, recipe)
