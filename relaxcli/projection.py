"""Projection: strip the branches (θ = 0) and check that what remains, the user's own model, is equivariant.

Example:
    >>> model = project(relaxed, inputs=(pos, vel), irreps_in=["cartesian_points", "1o"],
    ...                 irreps_out="cartesian_points")
    >>> torch.save(model.state_dict(), ...)  # exactly the user's keys
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .build import DTYPES, build_data, example_batch, restore, to_device, user_state
from .checkpoint import PROJECTED, RELAXED, Checkpoint, load_checkpoint, save_checkpoint, versions
from .errors import EquivarianceError, RelaxError
from .graph import RelaxedModel
from .recipe import Recipe
from .testing import EquivarianceReport, equivariance_error

__all__ = ["project", "verify_equivariant", "project_checkpoint", "symmetry_args", "example_inputs",
           "export_checkpoint_file"]


def verify_equivariant(model: nn.Module, inputs: Sequence[torch.Tensor], irreps_in: Sequence[Any], irreps_out: Any,
                       tolerance: float = 1e-6, **kwargs: Any) -> EquivarianceReport:
    """Measure the relative equivariance error of ``model`` (in eval mode) and raise
    :class:`~relaxcli.EquivarianceError` if it exceeds ``tolerance``."""
    was_training = model.training
    model.eval()
    try:
        report = equivariance_error(model, inputs, irreps_in, irreps_out, **kwargs)
    finally:
        model.train(was_training)
    if not report.relative <= tolerance:
        raise EquivarianceError(
            f"the projected model is not equivariant: relative error {report.relative:.3e} exceeds the tolerance "
            f"{tolerance:.1e} (absolute {report.absolute:.3e}; per case "
            + ", ".join(f"{k} {v:.2e}" for k, v in report.cases.items())
            + "). Check the symmetry spec of the inputs and output, or raise the tolerance."
        )
    return report


def project(relaxed: RelaxedModel, *, inputs: Sequence[torch.Tensor] | None = None,
            irreps_in: Sequence[Any] | None = None, irreps_out: Any = None, tolerance: float = 1e-6,
            **kwargs: Any) -> nn.Module:
    """Strip the branches of ``relaxed`` and return the user's module; verify equivariance when ``inputs`` are given.

    Raises:
        EquivarianceError: the stripped model's relative error on ``inputs`` exceeds ``tolerance``.
    """
    model = relaxed.strip()
    if inputs is not None:
        if irreps_in is None:
            raise ValueError("project(..., inputs=...) needs irreps_in and irreps_out to check equivariance")
        verify_equivariant(model, inputs, irreps_in, irreps_out, tolerance, **kwargs)
    return model


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


def project_checkpoint(path: str | Path, out: str | Path | None = None, *, tolerance: float | None = None,
                       trials: int = 3, samples: int = 16, verify: bool = True, overwrite: bool = False,
                       keep_gamma: bool = False) -> tuple[Path, EquivarianceReport | None, Path | None]:
    """``relax project``: strip the branches of a relaxed checkpoint, verify, and write the user's state_dict.
    Returns the output path, the equivariance report, and the projected ``.pt2`` when the model is a program.

    The output holds exactly the keys of the user's ``state_dict()`` (``load_state_dict(strict=True)`` works) and
    metadata naming the model component, its arguments and the recipe. Nothing is written if the check fails.

    With ``keep_gamma`` (for ``ace_elastic`` runs) the branches stay, with their learnt γ: the output is the
    approximately equivariant relaxed model (a relaxed checkpoint without training state, which
    :func:`relaxcli.load_model` rebuilds); its equivariance error is measured and reported, not enforced.
    """
    ckpt = load_checkpoint(path)
    if ckpt.kind == "projected":
        raise RelaxError(f"{ckpt.path} is already a projected checkpoint; 'relax inspect' it instead")
    suffix = ".relaxed.safetensors" if keep_gamma else ".projected.safetensors"
    out_path = Path(out) if out is not None else ckpt.path.with_name(ckpt.path.stem + suffix)
    if out_path.exists() and not overwrite:
        raise RelaxError(f"{out_path} already exists; pass -o with another path, or --overwrite to replace it")
    if out_path.resolve() == ckpt.path.resolve():
        raise RelaxError(f"-o {out_path} is the checkpoint being read; choose another output path")
    if keep_gamma:
        return (*_export_relaxed(ckpt, out_path, trials, samples, verify), None)
    recipe, model, relaxed = restore(ckpt)
    if relaxed is not None:  # in hooks mode the branches sit on the user's modules: take them off
        model = relaxed.strip()
    is_program = getattr(model, "relax_program", None) is not None
    if is_program and program_path(out_path).exists() and not overwrite:
        raise RelaxError(f"{program_path(out_path)} already exists; pass -o with another path, or --overwrite")
    model.eval()
    report = None
    tol = default_tolerance(recipe) if tolerance is None else tolerance
    if verify:
        args, kw = symmetry_args(recipe, example_inputs(recipe, samples), model)
        report = verify_equivariant(model, args, tolerance=tol, ntrials=trials, **kw)
    meta = {"format": PROJECTED, "model_component": recipe.model.target, "model_kwargs": recipe.model.kwargs,
            "recipe": recipe.to_dict(), "source_checkpoint": str(ckpt.path),
            "state_dict_keys": list(user_state(model)), "step": ckpt.json("step"),
            "versions": versions(),
            "equivariance": None if report is None else {"relative": report.relative, "absolute": report.absolute,
                                                         "tolerance": tol, "cases": report.cases}}
    save_checkpoint(out_path, dict(user_state(model)), meta)
    program = None
    if is_program:  # a .pt2 model: the projected program as well
        program = write_verified_program(model, example_inputs(recipe, samples), program_path(out_path))
    return out_path, report, program


def program_path(out: Path) -> Path:
    """``x.projected.safetensors`` -> ``x.projected.pt2``."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".pt2")


def write_verified_program(model: nn.Module, inputs: Any, out: Path) -> Path:
    """Write ``model`` as a ``.pt2`` (see :func:`relaxcli.program.export_checkpoint`) and check that the program
    read back computes what ``model`` computes."""
    from .program import export_checkpoint

    args = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    model.eval()
    export_checkpoint(model, args, out)
    with torch.no_grad():
        want, got = model(*args), torch.export.load(out).module()(*args)
    if not torch.allclose(want, got, rtol=1e-5, atol=1e-6):
        out.unlink()
        raise RelaxError(f"the exported program {out} does not reproduce the model (max difference "
                         f"{float((want - got).abs().max()):.3e}); it was not kept")
    return out


def _export_relaxed(ckpt: Checkpoint, out_path: Path, trials: int, samples: int,
                    verify: bool) -> tuple[Path, EquivarianceReport | None]:
    """The relaxed model with its learnt γ, as a relaxed checkpoint without training state."""
    recipe, model, relaxed = restore(ckpt)
    if relaxed is None:
        raise RelaxError(f"{ckpt.path} holds no branches (a standard run), so there is no γ to keep; "
                         "drop --keep-gamma to write the model")
    report = None
    if verify:
        args, kw = symmetry_args(recipe, example_inputs(recipe, samples), relaxed)
        relaxed.eval()
        report = equivariance_error(relaxed, args, ntrials=trials, **kw)
    tensors = {f"model.{k}": v for k, v in user_state(model).items()}
    tensors.update({f"branches.{k}": v for k, v in relaxed.branches.state_dict().items()})
    keep = ("step", "epoch", "relaxed", "sites", "relax_mode", "site_state", "theta", "recipe")  # text, as stored
    meta = {**{k: ckpt.metadata[k] for k in keep if k in ckpt.metadata}, "format": RELAXED,
            "source_checkpoint": str(ckpt.path), "versions": versions(),
            "equivariance": None if report is None else {"relative": report.relative, "absolute": report.absolute,
                                                         "cases": report.cases}}
    save_checkpoint(out_path, tensors, meta)
    return out_path, report


def export_checkpoint_file(path: str | Path, out: str | Path | None = None, samples: int = 16,
                           overwrite: bool = False) -> Path:
    """``relax export``: a projected checkpoint as a ``torch.export`` program (``.pt2``), checked against the model."""
    ckpt = load_checkpoint(path)
    if ckpt.kind != "projected":
        raise RelaxError(f"{ckpt.path} is a relaxed checkpoint; project it first ('relax project {ckpt.path}') and "
                         "export the projected checkpoint that writes")
    out_path = Path(out) if out is not None else program_path(ckpt.path)
    if out_path.exists() and not overwrite:
        raise RelaxError(f"{out_path} already exists; pass -o with another path, or --overwrite to replace it")
    recipe, model, _ = restore(ckpt)
    return write_verified_program(model, example_inputs(recipe, samples), out_path)
