"""From a recipe (or a checkpoint) to live objects: the user's model with its initial weights, the data splits, and
the relaxation (relaxed model, regulariser, θ schedule). ``train``, ``project`` and ``inspect`` all build here.

Example:
    >>> recipe = load_recipe("recipes/nbody_relaxed.yaml")
    >>> model = build_model(recipe); splits = build_data(recipe)
    >>> relaxation = build_relaxation(model, recipe, total_steps=1000, steps_per_epoch=30)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.graph import RelaxedModel, relax
from ..core.regularizers import Regularizer
from ..core.reps import default_dtype
from ..core.schedules import SCHEDULES
from ..errors import RecipeError, RelaxError
from ..ops.base import OpAdapter
from ..ops.registry import ACTIONS, registered_ops
from ..recipe import Recipe, instantiate
from .checkpoint import Checkpoint, load_checkpoint, load_user_state, load_weights, user_state
from .relaxation import NoRelaxation, Relaxation

__all__ = [
    "DTYPES",
    "resolve_device",
    "build_model",
    "Splits",
    "build_data",
    "build_relaxed",
    "build_relaxation",
    "restore",
    "load_model",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RelaxError("trainer.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


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
        raise RecipeError(
            [
                f"data: {recipe.data.target} must give 'train' and 'val' datasets (attributes or dict "
                f"keys), and optionally 'test'; it gave a {type(data).__name__} without them"
            ]
        )
    return Splits(train, val, test)


def build_relaxed(model: nn.Module, recipe: Recipe) -> RelaxedModel | None:
    """Relax ``model`` as ``recipe.relax`` says (its ``ops`` tried before the registered ones); None for a standard
    run (``relax.enabled: false``)."""
    cfg = recipe.relax
    if not cfg.enabled:
        return None
    # resolved to their class objects: any public alias of a class (torch.nn.Linear) matches its instances
    mine: list[OpAdapter] = [ACTIONS[op.action](op.layer, **op.options()).resolve() for op in cfg.ops]
    return relax(
        model,
        mode=cfg.mode,
        include=cfg.include,
        exclude=cfg.exclude,
        init_std=cfg.branch.init_std,
        adapters=mine + registered_ops() if mine else None,
        fuse=cfg.fuse,
        scalar_sites=cfg.scalar_sites,
    )


def build_relaxation(
    model: nn.Module, recipe: Recipe, total_steps: int, steps_per_epoch: int, relaxed: RelaxedModel | None = None
) -> Relaxation:
    """The relaxation the trainer drives: :class:`NoRelaxation` for a standard run, else the relaxed model (built
    here unless given) with the recipe's regulariser and θ schedule."""
    relaxed = relaxed if relaxed is not None else build_relaxed(model, recipe)
    if relaxed is None:
        return NoRelaxation(model)
    r, t = recipe.relax.regularizer, recipe.relax.theta
    regularizer = Regularizer(r.weight, r.projection, r.lie, r.discrete, r.source, r.rows, r.every, r.reduce)
    schedule = SCHEDULES[t.schedule].from_recipe(t.options(), total_steps, steps_per_epoch)
    return Relaxation(relaxed, regularizer, schedule)


def restore(ckpt: Checkpoint) -> tuple[Recipe, nn.Module, RelaxedModel | None]:
    """Rebuild the recipe's model from a checkpoint (and its relaxed wrapper, for relaxed checkpoints)."""
    if ckpt.recipe is None:
        raise RelaxError(f"{ckpt.path} holds no recipe, so the model cannot be rebuilt; it was not written by relax")
    recipe = ckpt.recipe
    recipe.model.weights = None  # the checkpoint's own weights replace the initial ones
    model = build_model(recipe)
    state = ckpt.model_state()
    _check_fits(ckpt, recipe.model.target, state, user_state(model))
    load_user_state(model, state)
    relaxed = None
    if ckpt.kind == "relaxed" and ckpt.branch_state():
        relaxed = build_relaxed(model, recipe)
        if relaxed is not None:
            _check_fits(
                ckpt, "the recipe's relaxation (relax section)", ckpt.branch_state(), relaxed.branches.state_dict()
            )
            relaxed.branches.load_state_dict(ckpt.branch_state(), strict=True)
    return recipe, model, relaxed


def _check_fits(ckpt: Checkpoint, what: str, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Strict match of a checkpoint's tensors with a freshly built model's: the same keys and shapes."""
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state))[:5], sorted(set(state) - set(expected))[:5]
        raise RelaxError(f"{ckpt.path} does not match {what}: missing {missing}, unexpected {unexpected}")
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        raise RelaxError(
            f"{ckpt.path} does not fit {what}: {'; '.join(shapes[:3])}"
            f"{f' (and {len(shapes) - 3} more)' if len(shapes) > 3 else ''}"
        )


def load_model(path: str | os.PathLike, trust: bool = False, recipe: Recipe | None = None) -> nn.Module:
    """A checkpoint as a live model, rebuilt from the recipe it stores: for a relaxed checkpoint the
    :class:`~relaxcli.RelaxedModel` with its branches and θ (γ) as stored, for a projected one the user's module.

    A checkpoint is data: its stored recipe may only name allowlisted components (relaxcli's tasks, torch optimisers
    and losses, e3nn layers; see :mod:`relaxcli.recipe.trust`); anything else raises
    :class:`~relaxcli.errors.TrustError` before it is imported. Pass ``trust=True`` for a file you trust (your own
    model class), or ``recipe=`` a recipe you hold to rebuild from it instead (its model must fit the tensors).

    Example:
        >>> kept = load_model("runs/field/checkpoints/best_relaxed.relaxed.safetensors")   # relax project --keep-gamma
        >>> kept.eval(); y = kept(pos, vel, charge)
    """
    _, model, relaxed = restore(load_checkpoint(path, trust=trust, recipe=recipe))
    return relaxed if relaxed is not None else model
