"""Checkpoints: safetensors files whose metadata holds the recipe, so a checkpoint alone is enough to rebuild a model.

Two kinds, told apart by the ``format`` metadata key:

- **relaxed** (``relaxcli/relaxed/1``, written by the trainer): tensors ``model.<key>`` (the user's ``state_dict``),
  ``branches.<key>`` (branch weights and θ) and, in ``last`` checkpoints, the trainer state needed to resume
  (``optimizer.*``, ``scheduler.*``, ``schedule.*``, ``rng.*``; their non-tensor parts as JSON in the metadata).
- **projected** (``relaxcli/projected/1``, written by ``relax project``): exactly the keys of the user's
  ``state_dict``, loadable with ``load_state_dict(strict=True)``; metadata names the model component and arguments.

This module is the one owner of the file format: the trainer writes through :func:`save_relaxed`, ``relax project``
through :func:`save_projected`, and everything reads through :func:`load_checkpoint`. User state dicts are taken and
loaded in eval mode (:func:`user_state`, :func:`load_user_state`).

Nothing here unpickles: tensors come from safetensors, the rest from JSON. Every write is atomic (temp file, fsync,
rename), so a killed process leaves either the old file or the new one. Every file carries a content hash
(``content_sha256``: tensors and metadata), verified on every read, so a damaged file is refused, not trained on. A
checkpoint is data: its stored recipe may only name allowlisted components unless the reader trusts it
(:mod:`relaxcli.recipe.trust`).

Example:
    >>> save_relaxed("last.safetensors", model, relaxation, recipe, step=10, epoch=1)
    >>> ckpt = load_checkpoint("last.safetensors"); ckpt.model_state()["w"]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from .._version import __version__
from ..errors import RelaxError
from ..recipe import Recipe, recipe_from_dict
from .files import atomic_write
from .runlog import NULL_REASONS, sanitize

if TYPE_CHECKING:
    from .relaxation import Relaxation

__all__ = [
    "RELAXED",
    "PROJECTED",
    "CONTENT_HASH",
    "Checkpoint",
    "save_checkpoint",
    "save_relaxed",
    "save_projected",
    "content_hash",
    "load_checkpoint",
    "flatten_state",
    "unflatten_state",
    "versions",
    "user_state",
    "load_user_state",
    "load_weights",
]

RELAXED = "relaxcli/relaxed/1"
#: Metadata key of the content hash (see :func:`content_hash`).
CONTENT_HASH = "content_sha256"
PROJECTED = "relaxcli/projected/1"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint."""
    import e3nn

    return {"relaxcli": __version__, "torch": torch.__version__, "e3nn": e3nn.__version__}


def flatten_state(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tensors, numbers) into tensors keyed ``prefix.<path>`` and a JSON
    skeleton in which each tensor is replaced by ``{"__tensor__": key}`` and each non-finite float (e.g. a best
    validation loss still at ``inf``) by ``{"__float__": "inf"}``, so the skeleton is strict JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(x, dict):
            return {
                "__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(x.items())]
            }
        if isinstance(x, (list, tuple)):
            return {
                "__list__" if isinstance(x, list) else "__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]
            }
        if isinstance(x, float) and not math.isfinite(x):
            return {"__float__": str(x)}
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
        if "__float__" in skeleton:
            return float(skeleton["__float__"])
    return skeleton  # older checkpoints hold NaN/Infinity literals here, which json.loads reads as floats


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Atomically write a safetensors file; metadata values that are not strings are stored as strict JSON: a
    non-finite number becomes ``null``, and the metadata key ``null_reasons`` says which (``"key/path": why``)."""
    meta: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            meta[key] = value
            continue
        found: dict[str, str] = {}
        meta[key] = json.dumps(sanitize(value, found), allow_nan=False)
        reasons.update({f"{key}/{where}" if where else key: why for where, why in found.items()})
    if reasons:
        meta[NULL_REASONS] = json.dumps(reasons)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    meta.pop(CONTENT_HASH, None)
    meta[CONTENT_HASH] = content_hash(plain, meta)
    atomic_write(path, safetensors.torch.save(plain, metadata=meta))


def content_hash(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the tensors in sorted key order (name, dtype, shape, bytes) and the metadata entries (sorted,
    without :data:`CONTENT_HASH`): what :func:`save_checkpoint` stores and :func:`load_checkpoint` verifies."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy()
        h.update(json.dumps(["tensor", key, str(t.dtype), list(t.shape), data.nbytes]).encode())
        h.update(data.tobytes())
    for key in sorted(k for k in metadata if k != CONTENT_HASH):
        h.update(json.dumps(["meta", key, metadata[key]]).encode())
    return "sha256:" + h.hexdigest()


def save_relaxed(
    path: str | os.PathLike,
    model: nn.Module,
    relaxation: Relaxation,
    recipe: Recipe,
    step: int,
    epoch: int,
    trainer_state: dict[str, Any] | None = None,
    **metadata: Any,
) -> None:
    """A relaxed checkpoint: the user's state dict, the branches (θ, γ) and, with ``trainer_state``, everything
    needed to resume (a nested state of tensors and plain values: optimiser, schedulers, RNG, counters)."""
    tensors = {f"model.{k}": v for k, v in user_state(model).items()}
    tensors.update({f"branches.{k}": v for k, v in relaxation.branch_state().items()})
    meta: dict[str, Any] = {
        "format": RELAXED,
        "recipe": json.dumps(recipe.to_dict()),
        "step": step,
        "epoch": epoch,
        "relaxed": relaxation.enabled,
        "versions": versions(),
        "theta": relaxation.theta(),
        "sites": [s.path for s in relaxation.sites],
        "relax_mode": relaxation.mode,
        "site_state": relaxation.site_stats(),
        **metadata,
    }
    if trainer_state is not None:
        state_tensors, skeleton = flatten_state(trainer_state, "state")
        tensors.update(state_tensors)
        meta["trainer_state"] = skeleton
    save_checkpoint(path, tensors, meta)


def save_projected(path: str | os.PathLike, model: nn.Module, recipe: Recipe, **metadata: Any) -> None:
    """A projected checkpoint: exactly the keys of the user's state dict, loadable with ``strict=True``, and
    metadata naming the model component, its arguments and the recipe (``metadata`` adds to it)."""
    state = user_state(model)
    meta = {
        "format": PROJECTED,
        "model_component": recipe.model.target,
        "model_kwargs": recipe.model.kwargs,
        "recipe": recipe.to_dict(),
        "state_dict_keys": list(state),
        "versions": versions(),
        **metadata,
    }
    save_checkpoint(path, dict(state), meta)


def user_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as relax saves and compares it: taken in eval mode. escnn layers keep their expanded
    ``filter``/``expanded_bias`` only in eval mode (train mode drops them, so the keys differ); a freshly built model
    has the eval-mode keys as well. For other models the mode changes nothing."""
    was_training = model.training
    model.eval()
    try:
        return model.state_dict()
    finally:
        model.train(was_training)


def load_user_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` in eval mode (see :func:`user_state`); the mode is restored afterwards, which
    for escnn re-expands the filters from the loaded weights."""
    was_training = model.training
    model.eval()
    try:
        model.load_state_dict(state, strict=True)
    finally:
        model.train(was_training)


def load_weights(model: nn.Module, path: str, what: str) -> None:
    """Load a safetensors state dict into ``model`` with ``strict=True``; one clear error if the keys differ."""
    try:
        state = safetensors.torch.load_file(path)
    except FileNotFoundError:
        raise RelaxError(f"{what}: weights file {path} does not exist") from None
    except Exception as e:
        raise RelaxError(f"{what}: {path} is not a readable safetensors file ({e})") from None
    expected = user_state(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise RelaxError(
            f"{what}: {path} does not match {type(model).__name__}: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    try:
        load_user_state(model, {k: v.to(expected[k].dtype) for k, v in state.items()})
    except RuntimeError as e:
        raise RelaxError(f"{what}: {path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from None


@dataclass
class Checkpoint:
    """A loaded checkpoint: its tensors, its metadata and (when present) the recipe it was trained from."""

    path: Path
    kind: str  # "relaxed" or "projected"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    recipe: Recipe | None
    verified: bool = False  # its content hash matched; False for files written before relax stored one (0.1.0)

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


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, recipe: Recipe | None = None) -> Checkpoint:
    """Read a relaxed or projected checkpoint; a clear :class:`RelaxError` for anything else.

    The content hash (:func:`content_hash`) is verified: a damaged file is refused. A file without one (written by
    relax 0.1.0) is read unverified (``Checkpoint.verified`` is False).

    Args:
        trust: the file's stored recipe may name any component. Without it (the default: a checkpoint is data), a
            component off the allowlist (:mod:`relaxcli.recipe.trust`) raises a :class:`~relaxcli.errors.TrustError`
            before anything is imported.
        recipe: rebuild with this recipe (one the caller holds) instead of the stored one, which is then not read.
    """
    p = Path(path)
    if not p.exists():
        raise RelaxError(
            f"checkpoint {p} does not exist; pass a .safetensors file written by 'relax train' "
            "(runs/<name>-<time>/checkpoints/best.safetensors) or by 'relax project'"
        )
    if p.is_dir():
        raise RelaxError(f"{p} is a directory; pass a checkpoint file such as {p / 'checkpoints' / 'best.safetensors'}")
    try:
        with safetensors.safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is no dict)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise RelaxError(
            f"{p} is not a readable safetensors checkpoint ({type(e).__name__}: {e}); it may be "
            "truncated or corrupted. Use another checkpoint (e.g. checkpoints/last.safetensors)."
        ) from None
    stored_hash = metadata.get(CONTENT_HASH)
    if stored_hash is not None and stored_hash != content_hash(tensors, metadata):
        raise RelaxError(
            f"{p} is damaged: its content no longer matches the hash relax stored when writing it (a "
            "changed byte in its tensors or metadata, e.g. a disk or copy error), so nothing was used "
            "from it. Use another checkpoint (checkpoints/best.safetensors or last.safetensors) or a "
            "fresh copy of the file."
        )
    fmt = metadata.get("format")
    if fmt not in (RELAXED, PROJECTED):
        raise RelaxError(
            f"{p} is a safetensors file but not a relax checkpoint (metadata 'format' is {fmt!r}, "
            f"expected {RELAXED!r} or {PROJECTED!r})"
        )
    if recipe is None and "recipe" in metadata:
        try:
            stored = json.loads(metadata["recipe"])
        except json.JSONDecodeError as e:
            raise RelaxError(f"{p}: the stored recipe is not valid JSON ({e}); the checkpoint is damaged") from None
        recipe = recipe_from_dict(stored, source=f"{p} (stored recipe)", trust=trust)
    return Checkpoint(
        p, "relaxed" if fmt == RELAXED else "projected", tensors, metadata, recipe, verified=stored_hash is not None
    )
