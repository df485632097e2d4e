"""Models held as files: ``torch.export`` programs (``.pt2``), relaxed and trained without the model's source.

:func:`export_program` exports a model once (where its source is at hand) with a symbolic batch dimension, and
records inside the ``.pt2`` the known equivariant ops it contains and how O(3) acts on each. A recipe then names the
file instead of a class::

    model: {_component_: relaxcli.program.load_program, path: model.pt2}

:func:`load_program` rebuilds a trainable module from it with ``torch.export.unflatten`` (the submodule tree and the
parameter names of the original model); the graph pass finds the recorded ops by path and attaches the branches with
forward hooks; ``relax project`` writes the projected weights both as safetensors (the original parameter names) and
as a new ``.pt2`` (:func:`write_program`: the same program with the projected weights); ``relax export`` writes a
``.pt2`` of any projected checkpoint (:func:`export_checkpoint`).

Example:
    >>> export_program(SEGNN(), (pos, vel, charges), "segnn.pt2")     # once, with the source
    $ relax train recipe.yaml                                          # model: relaxcli.program.load_program
    $ relax project runs/.../best.safetensors                          # -> best.projected.safetensors and .pt2
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.branches import Branch
from ..core.graph import find_sites
from ..errors import RelaxError
from ..run.files import atomic_path
from .base import OpAdapter
from .registry import ACTIONS

__all__ = ["export_program", "load_program", "program_adapters", "write_program", "export_checkpoint"]

SITES_FILE = "relaxcli_sites.json"  # the recorded sites, an extra file inside the .pt2 archive


def _record(path: str, module: nn.Module, adapter: OpAdapter) -> dict[str, Any]:
    try:
        return adapter.record(module)
    except TypeError as e:
        raise RelaxError(f"site {path}: {e}") from None


def export_program(
    model: nn.Module, example_inputs: tuple[Any, ...], path: str | os.PathLike, batch_dim: bool = True
) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` into ``path`` (``.pt2``) with its relaxable sites recorded.

    Args:
        model: the user's model (its source is needed here, and never again).
        example_inputs: positional inputs for tracing.
        path: the output file.
        batch_dim: keep dimension 0 of every tensor input symbolic, so the program takes any batch size.
    """
    sites = [{"path": p, "op": a.name, **_record(p, m, a)} for p, m, a in find_sites(model)]
    dynamic = None
    if batch_dim:
        batch = torch.export.Dim("batch")
        dynamic = tuple({0: batch} if isinstance(x, torch.Tensor) else None for x in example_inputs)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic)
    finally:
        model.train(was_training)
    _save(program, sites, path)
    return program


def _save(program: torch.export.ExportedProgram, sites: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """``torch.export.save`` through a temporary file and a rename: a killed process leaves the old file or none."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: torch warns about a name without .pt2
        torch.export.save(program, fh, extra_files={SITES_FILE: json.dumps(sites)})


def _load(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, list[dict[str, Any]]]:
    extra = {SITES_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch's own unpickling of tree specs warns about its internals
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.load(path, extra_files=extra)
    except FileNotFoundError:
        raise RelaxError(f"program file {path} does not exist") from None
    except Exception as e:
        raise RelaxError(f"{path} is not a readable torch.export program ({type(e).__name__}: {e})") from None
    sites = json.loads(extra[SITES_FILE]) if extra[SITES_FILE] else []
    return program, sites


def load_program(path: str) -> nn.Module:
    """A trainable module from a ``.pt2`` file: the program unflattened into the original submodule tree.

    A ``.pt2`` file is code, not data: ``torch.export.load`` (torch 2.13) unpickles its sample inputs (falling back
    to ``weights_only=False`` when the safe load fails), tensor-subclass weights and constants and opaque objects,
    evaluates its symbolic shape expressions with ``sympy.sympify`` and calls any function reachable from ``torch``
    that its graph names. Load only files you trust; a checkpoint's stored recipe may name this function only with
    ``--trust-recipe`` (see :mod:`relaxcli.recipe.trust`).

    The recorded sites (see :func:`export_program`) travel with the module as ``module.relax_program``. A program
    exported with plain ``torch.export`` loads too, but has no recorded sites to relax.
    """
    program, sites = _load(path)
    module = torch.export.unflatten(program)
    vars(module).update(
        relax_program={"path": str(path), "sites": sites}, relax_adapters=lambda: program_adapters(module)
    )  # what relaxcli.relax attaches with
    return module


class ProgramSiteAdapter(OpAdapter):
    """One recorded site of a program: matched by identity; its branch and feature from the recorded action,
    through the adapter class of that action (``ACTIONS``)."""

    def __init__(self, module: nn.Module, spec: dict[str, Any]) -> None:
        self.module, self.spec = module, spec
        self.name = f"{spec['op']} (program)"
        params = {k: v for k, v in spec.items() if k not in ("path", "op", "action")}
        self.inner = ACTIONS[spec["action"]](type(module), **params)

    def matches(self, module: nn.Module) -> bool:
        return module is self.module

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        return self.inner.make_branch(module, init_std)

    def record(self, module: nn.Module) -> dict[str, Any]:
        return self.inner.record(module)

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """An unflattened submodule takes its tensor inputs in the order the program uses them, so the feature is
        found by shape: the one input that fits the recorded action."""
        fits = [a for a in args if isinstance(a, torch.Tensor) and self.inner.fits_feature(self.module, a)]
        if len(fits) != 1:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            raise RelaxError(
                f"program site {self.spec['path']}: cannot tell its feature among inputs of shapes "
                f"{shapes} ({len(fits)} fit {self.spec})"
            )
        return fits[0]

    def add(self, output: Any, branch_output: torch.Tensor) -> Any:
        """An unflattened submodule may also return symbolic sizes beside its tensor: the branch joins the one
        output of the branch's shape."""
        if isinstance(output, torch.Tensor):
            return output + branch_output
        hits = [i for i, o in enumerate(output) if isinstance(o, torch.Tensor) and o.shape == branch_output.shape]
        if len(hits) != 1:
            raise RelaxError(
                f"program site {self.spec['path']}: cannot tell its output among {len(output)} values "
                f"({len(hits)} have the branch's shape {tuple(branch_output.shape)})"
            )
        joined = list(output)
        joined[hits[0]] = joined[hits[0]] + branch_output
        return type(output)(joined) if not isinstance(output, list) else joined


def program_adapters(model: nn.Module) -> list[OpAdapter] | None:
    """The adapters of a module made by :func:`load_program` (None for any other module)."""
    info = getattr(model, "relax_program", None)
    if info is None:
        return None
    if not info["sites"]:
        raise RelaxError(
            f"{info['path']} records no relaxable sites: export it with relaxcli.export_program "
            "(which records them), not plain torch.export"
        )
    return [ProgramSiteAdapter(model.get_submodule(s["path"]), s) for s in info["sites"]]


def write_program(source: str | os.PathLike, state: dict[str, torch.Tensor], out: str | os.PathLike) -> Path:
    """The program of ``source`` with the weights ``state`` (the original parameter names), saved to ``out``."""
    program, sites = _load(source)
    params = program.state_dict
    if set(params) != set(state):
        raise RelaxError(
            f"the weights do not fit {source}: missing {sorted(set(params) - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - set(params))[:5]}"
        )
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(state[k])
    _save(program, sites, out)
    return Path(out)


def export_checkpoint(model: nn.Module, example_inputs: tuple[Any, ...], out: str | os.PathLike) -> Path:
    """``relax export``: a projected model as a ``.pt2`` (its program's own graph when it came from one)."""
    info = getattr(model, "relax_program", None)
    if info is not None:
        return write_program(info["path"], model.state_dict(), out)
    export_program(model, example_inputs, out)
    return Path(out)
