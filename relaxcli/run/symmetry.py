"""The recipe's ``symmetry`` section applied to a model: the inputs and group-action specs of whole-model checks
(``relax project``, ``relax inspect``), and the default tolerance.

Example:
    >>> args, kw = symmetry_args(recipe, example_inputs(recipe, 16), model)
    >>> equivariance_error(model, args, ntrials=3, **kw).relative
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.calls import inference
from ..core.graph import RelaxedModel
from ..core.reps import default_dtype
from ..core.symmetry import EquivarianceReport, equivariance_error
from ..errors import EquivarianceError, RecipeError, RelaxError
from ..recipe import Recipe, instantiate, locate
from .batches import build_collate, example_batch, model_function, to_device
from .build import DTYPES, Splits, build_data
from .checkpoint import load_user_state, user_state

__all__ = [
    "check_options",
    "check_before_training",
    "unrelaxed_problem",
    "example_inputs",
    "sample_count",
    "symmetry_args",
    "checked_function",
    "default_tolerance",
    "in_float64",
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
    inputs, _ = example_batch(splits.val, samples, build_collate(recipe))
    return to_device(inputs, torch.device("cpu"), DTYPES[recipe.trainer.dtype])


def sample_count(inputs: Any) -> int:
    """The number of samples in a collated batch of inputs: the graphs of a graph batch (its ``ptr``), else the
    leading dimension of its first tensor."""
    if isinstance(inputs, dict) and torch.is_tensor(inputs.get("ptr")):
        return max(int(inputs["ptr"].numel()) - 1, 1)
    items = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (list, tuple)) else (inputs,)
    first = next((x for x in items if torch.is_tensor(x)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else 1


def checked_function(recipe: Recipe, model: nn.Module, inputs: Any) -> Callable[..., Any]:
    """``model`` as the equivariance checks call it: on the positional form of ``inputs`` (see
    :func:`symmetry_args`), with the recipe's evaluation keyword arguments (``forward.eval_kwargs``)."""
    return model_function(model, inputs, recipe.forward.call_kwargs(training=False))


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
    if isinstance(sym.inputs, dict) != isinstance(inputs, dict):
        raise RelaxError(
            f"symmetry.inputs is a {'mapping' if isinstance(sym.inputs, dict) else 'list'} but the data's inputs are "
            f"{'a dict' if isinstance(inputs, dict) else 'positional'}; for dict inputs give a mapping from their "
            "keys to specs ({positions: cartesian_points, cell: 1x1o}), for positional inputs a list"
        )
    specs_in = [sym.inputs] if isinstance(sym.inputs, dict) else sym.inputs
    if len(specs_in) != len(args):
        raise RelaxError(
            f"symmetry.inputs lists {len(sym.inputs)} inputs but the model takes {len(args)} "
            f"(from the data); give one entry per model input"
        )
    if sym.group == "escnn":
        assert model is not None, "group escnn needs the model to look up its field types"
        user = model.module if isinstance(model, RelaxedModel) else model
        # SymmetryConfig.check refuses dict specs with group escnn
        assert not isinstance(sym.inputs, dict) and not isinstance(sym.output, dict)
        return args, {
            "irreps_in": [_field_type(user, s, recipe) for s in sym.inputs],
            "irreps_out": _field_type(user, sym.output, recipe),
        }
    return args, {
        "irreps_in": specs_in,
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


def default_tolerance(recipe: Recipe, dtype: str | None = None) -> float:
    """The relative equivariance error accepted by default: 1e-10 for a check in float64, else 1e-5."""
    return 1e-10 if (dtype or recipe.trainer.dtype) == "float64" else 1e-5


def in_float64(recipe: Recipe, model: nn.Module, inputs: Any) -> tuple[nn.Module, Any] | None:
    """``model`` rebuilt in float64 with its own tensors, and ``inputs`` cast, for a check that float32 rounding
    cannot blur (e3nn bakes constants in the dtype a model is built in, so casting is not enough). None where the
    model cannot be built so (a ``.pt2`` program, an escnn model, a construction or load that fails) or where the
    copy does not compute what the model computes (to float32 precision): the check then runs in the recipe's
    dtype."""
    if recipe.trainer.dtype == "float64" or getattr(model, "relax_program", None) is not None:
        return None
    if recipe.symmetry is not None and recipe.symmetry.group == "escnn":  # escnn keeps float32 bases: ~3e-8 at best
        return None
    try:
        with default_dtype(torch.float64):
            copy = instantiate(recipe.model)
        load_user_state(copy, _widened(user_state(model), user_state(copy), {n for n, _ in model.named_buffers()}))
        copy.eval()
        inputs64 = to_device(inputs, torch.device("cpu"), torch.float64)
        (args, _), (args64, _) = symmetry_args(recipe, inputs, model), symmetry_args(recipe, inputs64, copy)
        out = inference(checked_function(recipe, model, inputs), args)
        out64 = inference(checked_function(recipe, copy, inputs64), args64)
    except Exception:  # any failure means "not buildable in float64": the check runs as the recipe says
        return None
    return (copy, inputs64) if _agree(out, out64) else None


def _widened(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], buffers: set[str]
) -> dict[str, torch.Tensor]:
    """``state`` in float64 for a copy built in float64 whose own tensors are ``own``. A buffer that is exactly its
    float32 rounding of the copy's (a constant built at construction: MACE's ``U_matrix``, Bessel frequencies) keeps
    the copy's float64 value; parameters and every other tensor are the model's, cast."""
    out = {}
    for key, value in state.items():
        mine = own.get(key)
        if (
            key in buffers
            and mine is not None
            and value.is_floating_point()
            and mine.shape == value.shape
            and torch.equal(mine.to(value.dtype), value)
        ):
            out[key] = mine
        else:
            out[key] = value.to(torch.float64) if value.is_floating_point() else value
    return out


def _agree(a: Any, b: Any) -> bool:
    """Whether two outputs (tensors, nested in tuples, lists and dicts) agree to float32 precision."""
    if torch.is_tensor(a) and torch.is_tensor(b):
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        scale = float(b.abs().max()) if b.numel() else 0.0
        if not math.isfinite(scale):  # NaN or inf outputs: the check in the recipe's dtype says so
            return False
        return bool(torch.allclose(a.to(torch.float64), b.to(torch.float64), rtol=1e-3, atol=1e-4 * scale + 1e-6))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_agree(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_agree(a[k], b[k]) for k in a)
    return type(a) is type(b)


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
    collate = build_collate(recipe)
    inputs, _ = example_batch(splits.val, 2, collate)  # (one spec per input: checked with the data, preflight)
    inputs = to_device(inputs, device, DTYPES[recipe.trainer.dtype])
    args = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    was_training = net.training
    net.eval()
    try:
        call = checked_function(recipe, net, inputs)
        output = inference(call, args)
        if sym.group == "o3":
            problems = _spec_problems(recipe, inputs, output)
            if problems:
                raise RecipeError(problems, recipe.source or "recipe")
        check_args, kw = symmetry_args(recipe, inputs, net)
        report = equivariance_error(call, check_args, ntrials=1, generator=torch.Generator().manual_seed(0), **kw)
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


def _spec_problems(recipe: Recipe, inputs: Any, output: Any) -> list[str]:
    """Each o3 spec of the ``symmetry`` section against the tensor it describes (two validation items and the
    model's output on them): a key the data or the output lacks, or a dimension that does not fit; each problem
    names the key and its line."""
    sym = recipe.symmetry
    assert sym is not None
    checks: list[tuple[tuple[str | int, ...], str, Any, Any]] = []  # (key path, what, spec, value)
    if isinstance(sym.inputs, dict):
        for name, spec in sym.inputs.items():
            checks.append((("symmetry", "inputs", name), f"the input {name!r}", spec, inputs.get(name, _MISSING)))
    else:
        args = inputs if isinstance(inputs, (list, tuple)) else (inputs,)
        checks += [
            (("symmetry", "inputs", i), f"input {i}", spec, x) for i, (spec, x) in enumerate(zip(sym.inputs, args))
        ]
    if isinstance(sym.output, dict):
        got = output if isinstance(output, dict) else {}
        for name, spec in sym.output.items():
            checks.append((("symmetry", "output", name), f"the output {name!r}", spec, got.get(name, _MISSING)))
    else:
        outputs = output if isinstance(output, (list, tuple)) else (output,)
        checks.append((("symmetry", "output"), "the model's output", sym.output, outputs[0]))
    problems = []
    for key, what, spec, x in checks:
        if x is _MISSING:
            source = "each batch" if key[1] == "inputs" else "the model's output"
            have = inputs if key[1] == "inputs" else output
            keys = ", ".join(map(repr, have)) if isinstance(have, dict) else f"no keys: it is a {type(have).__name__}"
            problem: str | None = f"names {key[2]!r}, which {source} lacks ({keys})"
        else:
            problem = _dimension_problem(spec, x)
        if problem:
            dotted = ".".join(str(k) if isinstance(k, str) else f"[{k}]" for k in key).replace(".[", "[")
            problems.append(f"{locate(recipe, key)}: {dotted}: {problem}" + ("" if x is _MISSING else f" for {what}"))
    return problems


_MISSING = object()


def _dimension_problem(spec: Any, x: Any) -> str | None:
    """Why ``spec`` cannot act on tensor ``x`` (its last axis, or the axis the spec names), or None."""
    from ..core.symmetry import feature_spec

    parsed = feature_spec(spec)
    if parsed is None or not torch.is_tensor(x):
        return None
    dim = parsed.dim
    if dim == 1 and not parsed.points:  # a single scalar irrep acts on every entry (an energy of shape [B])
        return None
    where = "a last axis" if parsed.axis == -1 else f"axis {parsed.axis}"
    if not -x.dim() <= parsed.axis < x.dim() or x.shape[parsed.axis] != dim:
        hint = ""
        if parsed.axis == -1 and x.dim() > 1 and dim in x.shape[:-1]:
            axis = list(x.shape).index(dim)
            hint = f"; if axis {axis} holds it, write {{rep: {parsed.rep}, axis: {axis}}}"
        return f"{parsed.rep!r} acts on {where} of size {dim}, but it is {tuple(x.shape)}{hint}"
    return None
