"""The recipe's ``symmetry`` section applied to a model: the inputs and group-action specs of whole-model checks
(``relax project``, ``relax inspect``), and the default tolerance.

Example:
    >>> args, kw = symmetry_args(recipe, example_inputs(recipe, 16), model)
    >>> equivariance_error(model, args, ntrials=3, **kw).relative
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.graph import RelaxedModel
from ..errors import RelaxError
from ..recipe import Recipe
from .batches import example_batch, to_device
from .build import DTYPES, build_data

__all__ = ["example_inputs", "symmetry_args", "default_tolerance"]


def example_inputs(recipe: Recipe, samples: int) -> Any:
    """The first ``samples`` validation inputs of the recipe's data (in the recipe's dtype), for equivariance checks."""
    splits = build_data(recipe)
    inputs, _ = example_batch(splits.val, samples)
    return to_device(inputs, torch.device("cpu"), DTYPES[recipe.trainer.dtype])


def symmetry_args(recipe: Recipe, inputs: Any,
                  model: nn.Module | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional inputs and the keyword arguments of :func:`~relaxcli.testing.equivariance_error` from the recipe's
    ``symmetry`` section; a clear error when it is missing. With ``group: escnn`` the specs name attributes of
    ``model`` (the user's module, or a relaxed model around it) holding escnn FieldTypes, which are looked up here."""
    sym = recipe.symmetry
    if sym is None:
        raise RelaxError(
            f"recipe '{recipe.name}' has no 'symmetry' section, so equivariance cannot be checked. Add one saying how "
            "the group acts on each model input and on the output, e.g.\n  symmetry:\n    inputs: [cartesian_points, "
            "1x1o, null]\n    output: cartesian_points")
    args = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    if len(sym.inputs) != len(args):
        raise RelaxError(f"symmetry.inputs lists {len(sym.inputs)} inputs but the model takes {len(args)} "
                         f"(from the data); give one entry per model input")
    if sym.group == "escnn":
        assert model is not None, "group escnn needs the model to look up its field types"
        user = model.module if isinstance(model, RelaxedModel) else model
        return args, {"irreps_in": [_field_type(user, s, recipe) for s in sym.inputs],
                      "irreps_out": _field_type(user, sym.output, recipe)}
    return args, {"irreps_in": sym.inputs, "irreps_out": sym.output, "do_parity": sym.parity,
                  "do_translation": sym.translation}


def _field_type(model: nn.Module, name: str | None, recipe: Recipe) -> Any:
    if name is None:
        return None
    value = getattr(model, name, None)
    if value is None or not hasattr(value, "gspace"):
        raise RelaxError(f"symmetry (group escnn) names {name!r}, but {recipe.model.target} has no attribute {name!r} "
                         f"holding an escnn FieldType (got {type(value).__name__}); name the attribute that does")
    return value


def default_tolerance(recipe: Recipe) -> float:
    return 1e-10 if recipe.trainer.dtype == "float64" else 1e-5


