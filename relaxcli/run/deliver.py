"""Delivering a trained model: ``relax project`` (strip the branches, verify, write the user's state dict) and
``relax export`` (a projected checkpoint as a ``torch.export`` program).

Example:
    >>> out, report, program = project_checkpoint("runs/nbody/checkpoints/best.safetensors")
    >>> export_checkpoint_file(out)                      # -> best.projected.pt2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.projection import verify_equivariant
from ..core.symmetry import EquivarianceReport, equivariance_error
from ..errors import EquivarianceError, RelaxError
from ..recipe import Recipe
from .build import build_relaxation, restore
from .checkpoint import Checkpoint, load_checkpoint, save_projected, save_relaxed
from .files import atomic_path, check_not_input
from .symmetry import (
    check_options,
    checked_function,
    default_tolerance,
    example_inputs,
    in_float64,
    sample_count,
    symmetry_args,
)

__all__ = ["project_checkpoint", "export_checkpoint_file"]


def project_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    *,
    tolerance: float | None = None,
    trials: int = 3,
    samples: int = 16,
    verify: bool = True,
    overwrite: bool = False,
    keep_gamma: bool = False,
    trust: bool = False,
    recipe: Recipe | None = None,
) -> tuple[Path, EquivarianceReport | None, Path | None]:
    """``relax project``: strip the branches of a relaxed checkpoint, verify, and write the user's state_dict.
    Returns the output path, the equivariance report, and the projected ``.pt2`` when the model is a program.

    The model is rebuilt from the checkpoint's stored recipe, which may only name allowlisted components unless
    ``trust`` (``--trust-recipe``), or from ``recipe`` (``--recipe``), a recipe the caller holds whose model must fit
    the checkpoint's tensors (see :func:`~relaxcli.run.checkpoint.load_checkpoint`).

    The output holds exactly the keys of the user's ``state_dict()`` (``load_state_dict(strict=True)`` works) and
    metadata naming the model component, its arguments and the recipe. Nothing is written if the check fails.

    With ``keep_gamma`` (for ``ace_elastic`` runs) the branches stay, with their learnt γ: the output is the
    approximately equivariant relaxed model (a relaxed checkpoint without training state, which
    :func:`relaxcli.load_model` rebuilds); its equivariance error is measured and reported, not enforced (but a
    non-finite error is refused).

    Raises:
        RecipeError: ``trials`` or ``samples`` is not a positive integer, or ``tolerance`` not a positive finite number.
        EquivarianceError: the check fails, or its error is not finite (NaN weights or outputs).
    """
    check_options(trials=trials, samples=samples, tolerance=tolerance)
    ckpt = load_checkpoint(path, trust=trust, recipe=recipe)
    if ckpt.kind == "projected":
        raise RelaxError(f"{ckpt.path} is already a projected checkpoint; 'relax inspect' it instead")
    suffix = ".relaxed.safetensors" if keep_gamma else ".projected.safetensors"
    out_path = Path(out) if out is not None else ckpt.path.with_name(ckpt.path.stem + suffix)
    check_not_input(out_path, {"the checkpoint being read": ckpt.path}, "-o")
    if out_path.exists() and not overwrite:
        raise RelaxError(f"{out_path} already exists; pass -o with another path, or --overwrite to replace it")
    if keep_gamma:
        return (*_export_relaxed(ckpt, out_path, trials, samples, verify), None)
    recipe, model, relaxed = restore(ckpt)
    if relaxed is not None:  # in hooks mode the branches sit on the user's modules: take them off
        model = relaxed.strip()
    is_program = getattr(model, "relax_program", None) is not None
    if is_program:
        check_not_input(
            program_path(out_path),
            {"the checkpoint being read": ckpt.path, "the program the model was loaded from": _program_source(model)},
            "the projected program of -o",
        )
    if is_program and program_path(out_path).exists() and not overwrite:
        raise RelaxError(f"{program_path(out_path)} already exists; pass -o with another path, or --overwrite")
    model.eval()
    report = None
    tol = default_tolerance(recipe) if tolerance is None else tolerance
    if verify:  # in float64 where the model can be built so: float32 rounding would hide errors below ~1e-6
        inputs = example_inputs(recipe, samples)
        checked, dtype = model, recipe.trainer.dtype
        wider = in_float64(recipe, model, inputs) if recipe.symmetry is not None else None
        if wider is not None:
            (checked, inputs), dtype = wider, "float64"
            tol = default_tolerance(recipe, dtype) if tolerance is None else tolerance
        args, kw = symmetry_args(recipe, inputs, checked)
        call = checked_function(recipe, checked, inputs)
        report = verify_equivariant(
            checked, args, tolerance=tol, samples=sample_count(inputs), ntrials=trials, call=call, **kw
        )
        report.dtype = dtype
    save_projected(
        out_path,
        model,
        recipe,
        source_checkpoint=str(ckpt.path),
        step=ckpt.json("step"),
        equivariance=None if report is None else {**_equivariance_meta(report), "tolerance": tol},
    )
    program = None
    if is_program:  # a .pt2 model: the projected program as well
        program = write_verified_program(model, example_inputs(recipe, samples), program_path(out_path))
    return out_path, report, program


def _equivariance_meta(report: EquivarianceReport) -> dict[str, Any]:
    """What a written checkpoint records of its check: the errors, and which cases on how many elements and samples."""
    return {
        "relative": report.relative,
        "absolute": report.absolute,
        "cases": report.cases,
        "elements": report.elements,
        "samples": report.samples,
        "dtype": report.dtype,
    }


def program_path(out: Path) -> Path:
    """``x.projected.safetensors`` -> ``x.projected.pt2``."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".pt2")


def _program_source(model: nn.Module) -> str | None:
    """The ``.pt2`` a model was loaded from (:func:`relaxcli.program.load_program`), or None."""
    info = getattr(model, "relax_program", None)
    return None if info is None else info["path"]


def write_verified_program(model: nn.Module, inputs: Any, out: Path) -> Path:
    """Write ``model`` as a ``.pt2`` (see :func:`relaxcli.program.export_checkpoint`) and check that the program
    read back computes what ``model`` computes. The program is written and checked as a temporary file beside
    ``out`` and renamed to ``out`` only when it passes, so a killed process or a failed check leaves ``out`` as it
    was (or absent)."""
    from ..ops.program import export_checkpoint

    args = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
    model.eval()
    with atomic_path(out) as tmp:
        export_checkpoint(model, args, tmp)
        with torch.no_grad(), open(tmp, "rb") as fh:
            want, got = model(*args), torch.export.load(fh).module()(*args)
        if not torch.allclose(want, got, rtol=1e-5, atol=1e-6):
            raise RelaxError(
                f"the exported program for {out} does not reproduce the model (max difference "
                f"{float((want - got).abs().max()):.3e}); it was not written"
            )
    return out


def _export_relaxed(
    ckpt: Checkpoint, out_path: Path, trials: int, samples: int, verify: bool
) -> tuple[Path, EquivarianceReport | None]:
    """The relaxed model with its learnt γ, as a relaxed checkpoint without training state."""
    recipe, model, relaxed = restore(ckpt)
    if relaxed is None:
        raise RelaxError(
            f"{ckpt.path} holds no branches (a standard run), so there is no γ to keep; "
            "drop --keep-gamma to write the model"
        )
    report = None
    if verify:
        inputs = example_inputs(recipe, samples)
        args, kw = symmetry_args(recipe, inputs, relaxed)
        relaxed.eval()
        report = equivariance_error(checked_function(recipe, relaxed, inputs), args, ntrials=trials, **kw)
        report.samples = sample_count(inputs)
        if not report.finite():
            raise EquivarianceError(
                f"the relaxed model's equivariance error is not finite (relative {report.relative}, absolute "
                f"{report.absolute}; tested {report.describe()}): its weights or outputs hold NaN or inf, so "
                f"{out_path} was not written. Use an earlier checkpoint of the run."
            )
    equivariance = None if report is None else _equivariance_meta(report)
    relaxation = build_relaxation(model, recipe, 1, 1, relaxed)  # its θ and per-site numbers are the stored ones
    save_relaxed(
        out_path,
        model,
        relaxation,
        recipe,
        ckpt.json("step"),
        ckpt.json("epoch"),
        theta=ckpt.json("theta"),
        site_state=ckpt.json("site_state"),
        source_checkpoint=str(ckpt.path),
        equivariance=equivariance,
    )
    return out_path, report


def export_checkpoint_file(
    path: str | Path,
    out: str | Path | None = None,
    samples: int = 16,
    overwrite: bool = False,
    trust: bool = False,
    recipe: Recipe | None = None,
) -> Path:
    """``relax export``: a projected checkpoint as a ``torch.export`` program (``.pt2``), checked against the model.
    ``trust`` and ``recipe`` as for :func:`project_checkpoint`."""
    check_options(samples=samples)
    ckpt = load_checkpoint(path, trust=trust, recipe=recipe)
    if ckpt.kind != "projected":
        raise RelaxError(
            f"{ckpt.path} is a relaxed checkpoint; project it first ('relax project {ckpt.path}') and "
            "export the projected checkpoint that writes"
        )
    out_path = Path(out) if out is not None else program_path(ckpt.path)
    check_not_input(out_path, {"the checkpoint being exported": ckpt.path}, "-o")
    if out_path.exists() and not overwrite:
        raise RelaxError(f"{out_path} already exists; pass -o with another path, or --overwrite to replace it")
    recipe, model, _ = restore(ckpt)
    check_not_input(out_path, {"the program the model was loaded from": _program_source(model)}, "-o")
    return write_verified_program(model, example_inputs(recipe, samples), out_path)
