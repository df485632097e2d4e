"""The recipe's ``symmetry`` section applied to a model: the inputs and group-action specs of whole-model checks
(``relax project``, ``relax inspect``), and the default tolerance.

Example:
    >>> args, kw = symmetry_args(recipe, example_inputs(recipe, 16), model)
    >>> equivariance_error(model, args, ntrials=3, **kw).relative
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from ..core.graph import RelaxedModel
from ..core.symmetry import EquivarianceReport, equivariance_error
from ..errors import EquivarianceError, RecipeError, RelaxError
from ..recipe import Recipe, locate
from .batches import example_batch, to_device
from .build import DTYPES, Splits, build_data

__all__ = [
    "check_options",
    "check_before_training",
    "unrelaxed_problem",
    "example_inputs",
    "sample_count",
    "symmetry_args",
    "default_tolerance",
]


def check_options(*, trials: Any = None, samples: Any = None, tolerance: Any = None) -> None:
    """Validate the options of a whole-model check (``--trials``, ``--samples``, ``--tolerance``; None: not given):
    a :class:`~relaxcli.errors.RecipeError` (exit 2) naming every bad one, since a check that tries no group element
    or sample, or accepts any error, verifies nothing."""
    problems = []

    def positive_int(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1

    if trials is not None and not positive_int(trials):
        problems.append(
            f"--trials {trials}: expected a positive integer, the random group elements tried per case "
            "(e.g. --trials 3); with none the check would test nothing"
        )
    if samples is not None and not positive_int(samples):
        problems.append(
            f"--samples {samples}: expected a positive integer, the validation samples the check runs "
            "on (e.g. --samples 16)"
        )
    if tolerance is not None and (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not math.isfinite(tolerance)
        or tolerance <= 0
    ):
        problems.append(
            f"--tolerance {tolerance}: expected a positive finite number, the largest relative "
            "equivariance error accepted (e.g. --tolerance 1e-5)"
        )
    if problems:
        raise RecipeError(problems, source="the equivariance check's options")


def example_inputs(recipe: Recipe, samples: int) -> Any:
    """The first ``samples`` validation inputs of the recipe's data (in the recipe's dtype), for equivariance checks."""
    check_options(samples=samples)
    splits = build_data(recipe)
    if len(splits.val) == 0:  # type: ignore[arg-type]
        raise RelaxError(
            f"recipe '{recipe.name}' has an empty validation split, so there are no samples to check "
            "equivariance on; give the data at least one validation sample"
        )
    inputs, _ = example_batch(splits.val, samples)
    return to_device(inputs, torch.device("cpu"), DTYPES[recipe.trainer.dtype])


def sample_count(inputs: Any) -> int:
    """The number of samples in a collated batch of inputs: the leading dimension of its first tensor."""
    items = inputs if isinstance(inputs, (list, tuple)) else (inputs,)
    first = next((x for x in items if torch.is_tensor(x)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1


def symmetry_args(
    recipe: Recipe, inputs: Any, model: nn.Module | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional inputs and the keyword arguments of :func:`~relaxcli.testing.equivariance_error` from the recipe's
    ``symmetry`` section; a clear error when it is missing. With ``group: escnn`` the specs name attributes of
    ``model`` (the user's module, or a relaxed model around it) holding escnn FieldTypes, which are looked up here."""
    sym = recipe.symmetry
    if sym is None:
        raise RelaxError(
            f"recipe '{recipe.name}' has no 'symmetry' section, so equivariance cannot be checked. Add one saying how "
            "the group acts on each model input and on the output, e.g.\n  symmetry:\n    inputs: [cartesian_points, "
            "1x1o, null]\n    output: cartesian_points"
        )
    args = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    if len(sym.inputs) != len(args):
        raise RelaxError(
            f"symmetry.inputs lists {len(sym.inputs)} inputs but the model takes {len(args)} "
            f"(from the data); give one entry per model input"
        )
    if sym.group == "escnn":
        assert model is not None, "group escnn needs the model to look up its field types"
        user = model.module if isinstance(model, RelaxedModel) else model
        return args, {
            "irreps_in": [_field_type(user, s, recipe) for s in sym.inputs],
            "irreps_out": _field_type(user, sym.output, recipe),
        }
    return args, {
        "irreps_in": sym.inputs,
        "irreps_out": sym.output,
        "do_parity": sym.parity,
        "do_translation": sym.translation,
    }


def _field_type(model: nn.Module, name: str | None, recipe: Recipe) -> Any:
    if name is None:
        return None
    value = getattr(model, name, None)
    if value is None or not hasattr(value, "gspace"):
        raise RelaxError(
            f"symmetry (group escnn) names {name!r}, but {recipe.model.target} has no attribute {name!r} "
            f"holding an escnn FieldType (got {type(value).__name__}); name the attribute that does"
        )
    return value


def default_tolerance(recipe: Recipe) -> float:
    return 1e-10 if recipe.trainer.dtype == "float64" else 1e-5


def check_before_training(
    recipe: Recipe, net: nn.Module, splits: Splits, device: torch.device, relaxed: bool
) -> EquivarianceReport | None:
    """Before any training step (``relax train`` and ``--dry-run``): the ``symmetry`` section against the model and
    two validation items (one entry per input, each spec's dimension against its tensor's last axis, the output's
    too), then one whole-model equivariance check of the model as it starts (``net`` must compute the unrelaxed
    model: the branches off). A model that is not equivariant before relaxation would be refused by ``relax
    project`` after training; here it stops at once.

    Raises:
        RecipeError: a missing section (for a relaxed run, which ``relax project`` must verify) or a spec that does
            not fit the data, naming the key and its line.
        EquivarianceError: the unrelaxed model of a relaxed run is not equivariant under the section's group (a
            standard run gets the report back: see :func:`unrelaxed_problem`).
    """
    sym = recipe.symmetry
    if sym is None:
        if not relaxed:
            return None
        raise RecipeError(
            [
                f"{locate(recipe, ())}: symmetry: missing section; 'relax project' needs it to verify the "
                "trained model, so say how the group acts on each model input and on the output, e.g.\n"
                "      symmetry: {inputs: [cartesian_points, 1x1o, null], output: cartesian_points}"
            ],
            recipe.source or "recipe",
        )
    inputs, _ = example_batch(splits.val, 2)  # (one spec per input: checked with the data, see preflight.check_run)
    inputs = to_device(inputs, device, DTYPES[recipe.trainer.dtype])
    args = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            output = net(*args)
        problems = []
        if sym.group == "o3":
            outputs = output if isinstance(output, (list, tuple)) else (output,)
            specs: list[tuple[tuple[str | int, ...], str, str | None, Any]] = [
                (("symmetry", "inputs", i), f"input {i}", spec, x) for i, (spec, x) in enumerate(zip(sym.inputs, args))
            ]
            specs.append((("symmetry", "output"), "the model's output", sym.output, outputs[0]))
            for key, what, spec, x in specs:
                problem = _dimension_problem(spec, x)
                if problem:
                    dotted = ".".join(str(k) if isinstance(k, str) else f"[{k}]" for k in key).replace(".[", "[")
                    problems.append(f"{locate(recipe, key)}: {dotted}: {problem} for {what}")
        if problems:
            raise RecipeError(problems, recipe.source or "recipe")
        check_args, kw = symmetry_args(recipe, args, net)
        report = equivariance_error(net, check_args, ntrials=1, generator=torch.Generator().manual_seed(0), **kw)
    finally:
        net.train(was_training)
    problem = unrelaxed_problem(recipe, report)
    if problem is not None and relaxed:
        raise EquivarianceError(problem)
    return report


def unrelaxed_problem(recipe: Recipe, report: EquivarianceReport | None) -> str | None:
    """What to say when the model was not equivariant before relaxation (:func:`check_before_training`'s report),
    or None. A relaxed run stops on it; a standard run (a non-equivariant baseline, say) is warned."""
    tolerance = default_tolerance(recipe)
    if report is None or report.relative <= tolerance:
        return None
    return (
        f"the model is not equivariant before relaxation: relative error {report.relative:.3e} (tolerance "
        f"{tolerance:.0e}; {report.describe()}) on two validation items under the recipe's symmetry section, so "
        "'relax project' would refuse the trained model. Check the model (a per-particle centring, a constant added "
        f"to a vector output, a non-equivariant layer) or the symmetry section ({locate(recipe, ('symmetry',))})"
    )


def _dimension_problem(spec: str | None, x: Any) -> str | None:
    """Why ``spec`` cannot act on tensor ``x`` (its last axis), or None."""
    if spec is None or not torch.is_tensor(x):
        return None
    if spec == "cartesian_points":
        dim = 3
    else:
        from e3nn import o3

        dim = o3.Irreps(spec).dim
    if x.dim() == 0 or x.shape[-1] != dim:
        return f"{spec!r} acts on a last axis of size {dim}, but it is {tuple(x.shape)}"
    return None
