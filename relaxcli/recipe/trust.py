"""The trust boundary: which components a recipe read from a *file* (a checkpoint's stored recipe, a run directory's
``recipe.yaml`` on ``--resume``) may name, checked before anything is imported.

A recipe the user runs (``relax train recipe.yaml``) is code they chose and is trusted as usual. A file the tool reads
is data: unless the user says they trust it (``--trust-recipe``, ``trust=True``), its recipe may only name

- the exact paths in :data:`ALLOWED` (relaxcli's own task models, task data and layers), and
- classes of a reviewed :data:`FAMILIES` entry: a class defined in that package (``torch.optim.Adam``) that subclasses
  the family's base (``torch.optim.Optimizer``). Only the trusted package's own module is imported to decide.

Anything else (``os.system``, ``builtins.exec``, a third-party module, ``relaxcli.run.files.atomic_write``) is refused
with one :class:`~relaxcli.errors.TrustError` naming every such component, before any of them is imported. Keyword
arguments stay plain data (numbers, strings, lists, mappings), which recipe validation already enforces.

:data:`NEEDS_TRUST` lists relaxcli's own components that read code-bearing files: ``load_program`` reads a ``.pt2``,
and ``torch.export.load`` (torch 2.13) unpickles parts of it (sample inputs fall back to ``weights_only=False``,
tensor-subclass weights and constants, opaque objects through ``pickle.loads``), evaluates its symbolic shapes with
``sympy.sympify`` (``eval``) and resolves any callable reachable from ``torch`` as a graph node. A ``.pt2`` named by a
file is therefore refused without trust.

Example:
    >>> allowed("torch.optim.Adam"), allowed("os.system")
    (True, False)
    >>> check_trusted({"model": {"_component_": "os.system"}}, "best.safetensors (stored recipe)")
    Traceback (most recent call last):
    relaxcli.errors.TrustError: best.safetensors (stored recipe) names a component that ...
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from ..errors import TrustError
from .components import ComponentSpec, canonical

__all__ = ["ALLOWED", "FAMILIES", "NEEDS_TRUST", "Family", "allowed", "untrusted_components", "check_trusted"]

_TASKS = {
    "nbody": ("SEGNN", "NBodyData"),
    "pointcloud": ("VNPointNet", "PointCloudData"),
    "grid": ("SteerableCNN", "AllenCahnData"),
    "atoms": ("Potential", "AtomsData"),
}

#: Exact component paths (as :func:`~relaxcli.recipe.components.canonical` writes them) that a file may name.
ALLOWED: frozenset[str] = frozenset(
    [f"relaxcli.tasks.{name}" for names in _TASKS.values() for name in names]
    + [f"relaxcli.tasks.{module}.{name}" for module, names in _TASKS.items() for name in names]
    + ["relaxcli.ops.vector_neurons.VNLinear", "relaxcli.VNLinear"]
    + [f"relaxcli.atoms.{name}" for name in ("GraphCollate", "EnergyForcesLoss")]
    + [f"relaxcli.tasks.atoms_extras.{name}" for name in ("mace_model", "nequip_model")]
    + [
        f"relaxcli.atoms.{module}.{name}"
        for module, name in (("graphs", "GraphCollate"), ("losses", "EnergyForcesLoss"))
    ]
)


@dataclass(frozen=True)
class Family:
    """Reviewed classes of a package: ``<package>[.<module>...].<Class>`` where the class is defined in ``package``
    and subclasses ``base`` (a dotted path in a trusted package)."""

    package: str
    base: str
    what: str  # for messages


#: Reviewed families of classes a file may name.
FAMILIES: tuple[Family, ...] = (
    Family("torch.optim", "torch.optim.Optimizer", "torch.optim optimizers"),
    Family("torch.optim.lr_scheduler", "torch.optim.lr_scheduler.LRScheduler", "torch.optim.lr_scheduler schedulers"),
    Family("torch.nn", "torch.nn.modules.loss._Loss", "torch.nn losses"),
    Family("e3nn.o3", "torch.nn.Module", "e3nn.o3 layers"),
    Family("e3nn.nn.models", "torch.nn.Module", "e3nn.nn.models networks"),
)

#: relaxcli's own components that read a code-bearing file, and why a file may not name them without trust.
NEEDS_TRUST: dict[str, str] = {
    "relaxcli.ops.program.load_program": "it loads a torch.export program (.pt2), and torch.export.load can run code "
    "stored in a .pt2 file (pickled parts, eval'd shape expressions)",
    "relaxcli.load_program": "it loads a torch.export program (.pt2), and torch.export.load can run code stored in a "
    ".pt2 file (pickled parts, eval'd shape expressions)",
}

_HOW = (
    "If you trust this file, pass --trust-recipe (in Python: trust=True); 'relax project', 'inspect' and "
    "'export' can instead rebuild the model from a recipe you hold with --recipe my.yaml (its model must fit the "
    "checkpoint's tensors)."
)


def _is_path(target: str) -> bool:
    parts = target.split(".")
    return len(parts) >= 2 and all(p.isidentifier() and not p.startswith("_") for p in parts)


@cache
def _resolve(dotted: str) -> Any:
    """An object of a trusted package by its dotted path (module, then one attribute), or None."""
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr, None)
    except Exception:  # a missing module of a trusted package: simply not allowed
        return None


def _in_family(target: str, family: Family) -> bool:
    if not target.startswith(family.package + "."):
        return False
    module, _, attr = target.rpartition(".")
    if module != family.package and not module.startswith(family.package + "."):
        return False
    base = _resolve(family.base)
    obj = _resolve(target)
    return (
        isinstance(obj, type)
        and isinstance(base, type)
        and issubclass(obj, base)
        and obj.__name__ == attr
        and (obj.__module__ == family.package or obj.__module__.startswith(family.package + "."))
    )


def allowed(target: str) -> bool:
    """Whether a file may name ``target`` without trust. Imports nothing outside torch, e3nn and relaxcli."""
    if not isinstance(target, str) or not _is_path(canonical(target)):
        return False
    path = canonical(target)
    return path in ALLOWED or any(_in_family(path, f) for f in FAMILIES)


@cache
def _component_sections() -> tuple[str, ...]:
    """The recipe's ``_component_`` sections (model, data, loss, optimizer, scheduler), read from the schema."""
    from .schema import Recipe

    hints = typing.get_type_hints(Recipe)
    return tuple(f.name for f in fields(Recipe) if ComponentSpec in (hints[f.name], *typing.get_args(hints[f.name])))


def untrusted_components(data: Any) -> list[str]:
    """``"key = 'path'"`` (with the reason where there is a special one) for every component of a raw recipe mapping
    that a file may not name without trust: the ``_component_`` of each section and each ``relax.ops[i].layer``."""
    found: list[str] = []

    def check(key: str, target: Any) -> None:
        if isinstance(target, str) and not allowed(target):
            why = NEEDS_TRUST.get(canonical(target))
            found.append(f"{key} = {target!r}" + (f" ({why})" if why else ""))

    if not isinstance(data, dict):
        return found
    for section in _component_sections():
        value = data.get(section)
        if isinstance(value, dict):
            check(f"{section}._component_", value.get("_component_"))
    relax = data.get("relax")
    ops = relax.get("ops") if isinstance(relax, dict) else None
    for i, op in enumerate(ops if isinstance(ops, list) else []):
        if isinstance(op, dict):
            check(f"relax.ops[{i}].layer", op.get("layer"))
    return found


def check_trusted(data: Any, source: str) -> None:
    """Raise one :class:`TrustError` naming every component of ``data`` that a file may not name without trust."""
    found = untrusted_components(data)
    if not found:
        return
    what = "a component" if len(found) == 1 else f"{len(found)} components"
    kinds = ", ".join(f.what for f in FAMILIES[:-1]) + f" and {FAMILIES[-1].what}"
    raise TrustError(
        f"{source} names {what} that a file may not run without your say-so: {'; '.join(found)}. "
        f"Nothing was imported. A file's recipe may only build relaxcli's own task models, data and "
        f"layers, {kinds}. {_HOW}"
    )
