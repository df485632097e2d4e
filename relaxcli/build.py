"""From a recipe to live objects: the user's model (with initial weights), the data splits, the relaxed model, the
regulariser and the θ schedule. ``train``, ``project`` and ``inspect`` all build through here.

Example:
    >>> recipe = load_recipe("recipes/nbody_relaxed.yaml")
    >>> model = build_model(recipe); splits = build_data(recipe)
    >>> relaxed = build_relaxed(model, recipe)     # None when relax.enabled is false
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from .adapters import IrrepsAdapter, OpAdapter, VectorNeuronAdapter, registered_ops
from .checkpoint import Checkpoint
from .errors import RecipeError, RelaxError
from .graph import RelaxedModel, relax
from .recipe import Recipe, instantiate
from .regularizers import Regularizer
from .reps import default_dtype
from .schedules import Schedule, make_schedule

__all__ = ["DTYPES", "default_dtype", "build_model", "Splits", "build_data", "build_relaxed", "build_adapters",
           "build_regularizer", "build_schedule", "split_batch", "call_args", "call_model", "to_device",
           "example_batch", "resolve_device", "restore", "load_model", "user_state", "load_user_state"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RelaxError("trainer.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


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
        raise RelaxError(f"{what}: {path} does not match {type(model).__name__}: missing keys {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    try:
        load_user_state(model, {k: v.to(expected[k].dtype) for k, v in state.items()})
    except RuntimeError as e:
        raise RelaxError(f"{what}: {path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from None


def build_model(recipe: Recipe) -> nn.Module:
    """Instantiate ``recipe.model`` in the recipe's dtype and load its ``_weights_`` if given."""
    with default_dtype(DTYPES[recipe.trainer.dtype]):
        model = instantiate(recipe.model)
    if not isinstance(model, nn.Module):
        raise RecipeError([f"model: {recipe.model.target} returned a {type(model).__name__}, not a torch.nn.Module"])
    if recipe.model.weights:
        load_weights(model, recipe.model.weights, "model._weights_")
    return model


@dataclass
class Splits:
    """The data splits; items are ``(inputs, target)`` with ``inputs`` a tuple of model arguments."""

    train: Dataset
    val: Dataset
    test: Dataset | None


def build_data(recipe: Recipe) -> Splits:
    """Instantiate ``recipe.data``: an object (or dict) with ``train``, ``val`` and optionally ``test`` datasets."""
    with default_dtype(DTYPES[recipe.trainer.dtype]):
        data = instantiate(recipe.data)

    def get(name: str) -> Any:
        return data.get(name) if isinstance(data, dict) else getattr(data, name, None)

    train, val, test = get("train"), get("val"), get("test")
    if train is None or val is None:
        raise RecipeError([f"data: {recipe.data.target} must give 'train' and 'val' datasets (attributes or dict "
                           f"keys), and optionally 'test'; it gave a {type(data).__name__} without them"])
    return Splits(train, val, test)


def build_relaxed(model: nn.Module, recipe: Recipe) -> RelaxedModel | None:
    """Relax ``model`` as ``recipe.relax`` says; None for a standard run (``relax.enabled: false``)."""
    cfg = recipe.relax
    if not cfg.enabled:
        return None
    return relax(model, mode=cfg.mode, include=cfg.include, exclude=cfg.exclude, init_std=cfg.branch.init_std,
                 adapters=build_adapters(recipe), fuse=cfg.fuse)


def build_adapters(recipe: Recipe) -> list[OpAdapter] | None:
    """The recipe's ``relax.ops`` as adapters, tried before the registered ones; None when there are none."""
    ops = recipe.relax.ops
    if not ops:
        return None
    mine: list[OpAdapter] = [
        IrrepsAdapter(op.layer, op.irreps_in, op.irreps_out, op.feature_arg) if op.action == "irreps"
        else VectorNeuronAdapter(op.layer, op.in_channels, op.out_channels, op.channel_axis, op.vector_axis)
        for op in ops
    ]
    return mine + registered_ops()


def build_regularizer(recipe: Recipe) -> Regularizer:
    r = recipe.relax.regularizer
    return Regularizer(r.weight, r.projection, r.lie, r.discrete, r.source, r.rows)


def build_schedule(recipe: Recipe, total_steps: int, steps_per_epoch: int) -> Schedule:
    t = recipe.relax.theta
    if t.schedule == "ace":
        return make_schedule("ace", total_steps, dual_lr=t.dual_lr, gamma_init=t.gamma_init)
    if t.schedule == "ace_elastic":
        return make_schedule("ace_elastic", total_steps, dual_lr=t.dual_lr, gamma_init=t.gamma_init, rho=t.rho)
    return make_schedule(t.schedule, total_steps, theta_max=t.max, granularity=t.granularity,
                         steps_per_epoch=steps_per_epoch, end=t.end)


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """``(inputs, target)`` from a collated batch."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise RelaxError("each data item must be a pair (inputs, target), where inputs is a tensor, a tuple of "
                         f"tensors (positional model arguments) or a dict (keyword arguments); got {type(batch)}")
    return batch[0], batch[1]


def call_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments from a batch's inputs (a tensor, a tuple of tensors, or a dict)."""
    if isinstance(inputs, dict):
        return (), inputs
    if isinstance(inputs, (list, tuple)):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model: nn.Module, inputs: Any) -> Any:
    args, kwargs = call_args(inputs)
    return model(*args, **kwargs)


def to_device(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors (nested in tuples/lists/dicts) to ``device``; floating tensors also to ``dtype``."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype if x.is_floating_point() else None)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, dtype) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, dtype) for k, v in x.items()}
    return x


def example_batch(dataset: Dataset, n: int) -> tuple[Any, torch.Tensor]:
    """The first ``n`` items of ``dataset``, collated."""
    n = min(n, len(dataset))  # type: ignore[arg-type]
    return split_batch(default_collate([dataset[i] for i in range(n)]))


def restore(ckpt: Checkpoint) -> tuple[Recipe, nn.Module, RelaxedModel | None]:
    """Rebuild the recipe's model from a checkpoint (and its relaxed wrapper, for relaxed checkpoints)."""
    if ckpt.recipe is None:
        raise RelaxError(f"{ckpt.path} holds no recipe, so the model cannot be rebuilt; it was not written by relax")
    recipe = ckpt.recipe
    recipe.model.weights = None  # the checkpoint's own weights replace the initial ones
    model = build_model(recipe)
    state = ckpt.model_state()
    expected = user_state(model)
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state))[:5], sorted(set(state) - set(expected))[:5]
        raise RelaxError(f"{ckpt.path} does not match {recipe.model.target}: missing {missing}, unexpected {unexpected}")
    load_user_state(model, state)
    relaxed = None
    if ckpt.kind == "relaxed" and ckpt.branch_state():
        relaxed = build_relaxed(model, recipe)
        if relaxed is not None:
            relaxed.branches.load_state_dict(ckpt.branch_state(), strict=True)
    return recipe, model, relaxed


def load_model(path: str | os.PathLike) -> nn.Module:
    """A checkpoint as a live model, rebuilt from the recipe it stores: for a relaxed checkpoint the
    :class:`~relaxcli.RelaxedModel` with its branches and θ (γ) as stored, for a projected one the user's module.

    Example:
        >>> kept = load_model("runs/field/checkpoints/best_relaxed.relaxed.safetensors")   # relax project --keep-gamma
        >>> kept.eval(); y = kept(pos, vel, charge)
    """
    from .checkpoint import load_checkpoint

    _, model, relaxed = restore(load_checkpoint(path))
    return relaxed if relaxed is not None else model
