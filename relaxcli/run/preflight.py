"""Checks of a built run before it trains, for what only the built objects can tell about a recipe: an empty split,
a batch larger than the training split, labels past the model's classes, a ``symmetry`` section for another number
of inputs than the data gives, a component that returned the wrong kind of object, an lr scheduler that fails or
makes the learning rate non-finite within the run. Each is a :class:`~relaxcli.errors.RecipeError` naming the key
(``relax train`` and ``--dry-run`` both build the trainer, so both report them before any training step).

Example:
    >>> check_run(recipe, model, splits)                       # after build_model / build_data
    >>> check_components(recipe, loss_fn, optimizer)           # after instantiating them
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import RecipeError, RelaxError
from ..recipe import Recipe, instantiate, locate
from ..recipe.components import ComponentSpec
from .build import Splits

__all__ = ["check_run", "check_components", "check_scheduler", "call_loss", "SCHEDULER_TRIAL_EPOCHS"]

#: At most this many epochs of the lr scheduler are tried on a throwaway optimizer before training.
SCHEDULER_TRIAL_EPOCHS = 1000


def _raise(recipe: Recipe, problems: list[str]) -> None:
    """One RecipeError; each problem (``"dotted.key: message"``) gets the ``file:line`` of its key in front."""
    if problems:
        located = []
        for problem in problems:
            head = problem.split(":", 1)[0]
            key = tuple(head.split(".")) if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", head) else ()
            located.append(f"{locate(recipe, key)}: {problem}")
        raise RecipeError(located, recipe.source or "recipe")


def _key(spec: ComponentSpec, name: str) -> str:
    """``data.train`` when the recipe sets ``train`` in ``data``, else ``data``."""
    return f"{spec.section}.{name}" if name in spec.kwargs else spec.section


def _kind(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__module__}.{type(value).__qualname__}"


def check_run(recipe: Recipe, model: nn.Module, splits: Splits) -> None:
    """The data splits, the batch size, the model's classes and inputs, and the symmetry section, against each
    other; one RecipeError listing every problem."""
    problems = _split_problems(recipe, splits)
    if not problems:
        problems = _input_problems(recipe, model, splits) + _class_problems(recipe, model, splits)
    _raise(recipe, problems)


def _split_problems(recipe: Recipe, splits: Splits) -> list[str]:
    problems, data = [], recipe.data
    for name in ("train", "val", "test"):
        dataset = getattr(splits, name)
        if dataset is None:
            continue
        try:
            size = len(dataset)
        except TypeError:
            problems.append(
                f"{_key(data, name)}: {data.target} gave {_kind(dataset)} as its {name!r} split, not a "
                "dataset with a length (a map-style torch Dataset, a list, ...)"
            )
            continue
        if size == 0:
            problems.append(
                f"{_key(data, name)}: the {name!r} split of {data.target} is empty; it needs at least one item"
            )
        elif name == "train" and recipe.trainer.batch_size > size:
            problems.append(
                f"trainer.batch_size: {recipe.trainer.batch_size} is larger than the training split "
                f"({size} items of {data.target}); every epoch would be one smaller batch. Use at most "
                f"{size}, or more training data"
            )
    return problems


def _inputs_of(splits: Splits) -> Any:
    item = splits.train[0]
    if not (isinstance(item, (list, tuple)) and len(item) == 2):
        return None  # the trainer's split_batch says what an item must be
    return item[0]


def _input_problems(recipe: Recipe, model: nn.Module, splits: Splits) -> list[str]:
    inputs = _inputs_of(splits)
    sym = recipe.symmetry
    if inputs is None:
        return []
    if sym is not None and isinstance(inputs, dict) != isinstance(sym.inputs, dict):
        kind = f"a dict with keys {', '.join(map(repr, inputs))}" if isinstance(inputs, dict) else "positional"
        want = (
            "a mapping from those keys to specs, e.g. {positions: cartesian_points}"
            if isinstance(inputs, dict)
            else "a list, one spec per input"
        )
        return [
            f"{locate(recipe, ('symmetry', 'inputs'))}: symmetry.inputs: the inputs of each item of "
            f"{recipe.data.target}'s training split are {kind}, so give {want}"
        ]
    if isinstance(inputs, dict):  # keyword arguments or one dict argument: the keys are checked at the start
        return []
    n = len(inputs) if isinstance(inputs, (list, tuple)) else 1
    problems = []
    if sym is not None and len(sym.inputs) != n:
        problems.append(
            f"symmetry.inputs: lists {len(sym.inputs)} input{'s' * (len(sym.inputs) != 1)} but the model "
            f"takes {n} (each item of {recipe.data.target}'s training split holds {n}); give one entry "
            "per model input, null for one without symmetry"
        )
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return problems
    P = inspect.Parameter
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is P.empty]
    takes_more = any(p.kind is P.VAR_POSITIONAL for p in params)
    if n < len(required) or (n > len(positional) and not takes_more):
        takes = f"{len(required)} to {len(positional)}" if len(required) != len(positional) else str(len(required))
        problems.append(
            f"model: {recipe.model.target}.forward takes {takes} input{'s' * (takes != '1')}, but each "
            f"item of {recipe.data.target}'s training split holds {n}; the model and the data do not fit"
        )
    return problems


def _class_count(dataset: Any) -> int | None:
    """The number of classes a classification split says it has (``classes``, ``num_classes`` or its labels)."""
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return len(classes)
    count = getattr(dataset, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.numel() and not labels.is_floating_point():
        return int(labels.max()) + 1
    return None


def _class_problems(recipe: Recipe, model: nn.Module, splits: Splits) -> list[str]:
    classes = getattr(model, "num_classes", None)
    if not isinstance(classes, int) or isinstance(classes, bool):
        return []
    counts = [
        c for c in (_class_count(d) for d in (splits.train, splits.val, splits.test) if d is not None) if c is not None
    ]
    if not counts or max(counts) <= classes:
        return []
    need = max(counts)
    return [
        f"{_key(recipe.model, 'num_classes')}: {recipe.model.target} has {classes} classes, but the labels of "
        f"{recipe.data.target} run to {need - 1} ({need} classes); set model.num_classes to {need} (or give the "
        "data fewer classes)"
    ]


def check_components(recipe: Recipe, loss: Any, optimizer: Any) -> None:
    """The loss must be callable and the optimizer a ``torch.optim.Optimizer`` (``builtins.print`` returns None)."""
    problems = []
    if not callable(loss):
        problems.append(
            f"loss._component_: {recipe.loss.target} returned {_kind(loss)}, which cannot be called; "
            "name a loss such as torch.nn.MSELoss (or a function of (output, target))"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        problems.append(
            f"optimizer._component_: {recipe.optimizer.target} returned {_kind(optimizer)}, not a "
            "torch.optim.Optimizer; name an optimizer such as torch.optim.Adam"
        )
    _raise(recipe, problems)


def check_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """The lr scheduler must have ``step``, ``state_dict`` and ``load_state_dict`` (the trainer steps it once per
    epoch and checkpoints it), and survive a trial run of the recipe's epochs (up to
    :data:`SCHEDULER_TRIAL_EPOCHS`) on a throwaway optimizer with a finite, non-negative learning rate."""
    spec = recipe.scheduler
    assert spec is not None
    missing = [m for m in ("step", "state_dict", "load_state_dict") if not callable(getattr(scheduler, m, None))]
    if missing:
        _raise(
            recipe,
            [
                f"scheduler._component_: {spec.target} returned {_kind(scheduler)}, which has no "
                f"{', '.join(missing)}; name an lr scheduler such as torch.optim.lr_scheduler.StepLR"
            ],
        )
    try:  # the same optimizer class and settings, on one throwaway parameter
        trial = type(optimizer)([torch.zeros(1, requires_grad=True)], **optimizer.defaults)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = instantiate(spec, trial)
    except Exception:  # a scheduler or optimizer that needs the real thing: it is not tried
        return
    args = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items())
    epochs = min(recipe.trainer.epochs, SCHEDULER_TRIAL_EPOCHS)
    for epoch in range(1, epochs + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                twin.step()
        except Exception as exc:
            message = str(exc).strip() or type(exc).__name__
            _raise(
                recipe,
                [
                    f"scheduler: {spec.target}({args}).step() failed after epoch {epoch} of a trial run: "
                    f"{type(exc).__name__}: {message[:200]}; check its arguments (the trainer calls step() "
                    "without arguments once per epoch)"
                ],
            )
        lr = trial.param_groups[0].get("lr")
        if isinstance(lr, torch.Tensor):
            lr = float(lr)
        if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr >= 0):
            _raise(
                recipe,
                [
                    f"scheduler: {spec.target}({args}) sets the learning rate to {lr} after epoch {epoch}; "
                    "check its arguments"
                ],
            )


def call_loss(recipe: Recipe, loss_fn: Any, output: Any, target: Any) -> torch.Tensor:
    """``loss_fn(output, target)``, which must be a one-element floating tensor (the batch's mean) for the trainer
    to differentiate; a loss that raises (``reduction: avg``, a target it cannot take) or returns anything else is a
    RecipeError naming the loss."""
    try:
        value = loss_fn(output, target)
    except RelaxError:
        raise
    except Exception as exc:
        spec, args = recipe.loss, ", ".join(f"{k}={v!r}" for k, v in recipe.loss.kwargs.items())
        message = str(exc).strip() or type(exc).__name__
        shapes = " and ".join(
            f"{what} of shape {tuple(x.shape)}"
            for what, x in (("an output", output), ("a target", target))
            if isinstance(x, torch.Tensor)
        )
        raise RecipeError(
            [
                f"loss: {spec.target}({args}) failed on {shapes or 'the first batch'}: "
                f"{type(exc).__name__}: {message[:300]}"
            ],
            recipe.source or "recipe",
        ) from exc
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return value
    spec, args = recipe.loss, ", ".join(f"{k}={v!r}" for k, v in recipe.loss.kwargs.items())
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    _raise(
        recipe,
        [
            f"loss: {spec.target}({args}) returned {_kind(value)}{shape}, not a one-element floating tensor "
            "(a mean over the batch); with torch losses, keep reduction 'mean' or 'sum'"
        ],
    )
    return value
