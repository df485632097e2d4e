"""Components: ``_component_`` sections naming a callable by import path, checked against its signature at load
time and called by :func:`instantiate`.

A component's keyword arguments are plain YAML values. ``_namespace_`` names those that the callable reads as an
attribute namespace instead of a dict (``args.n_knn``, as a ``get_model(args)`` written for argparse does); each
reaches it as an ``argparse.Namespace`` (mappings inside it too)::

    model:
      _component_: models.vn_pointnet.get_model
      _namespace_: [args]
      args: {n_knn: 20, pooling: mean}
      num_class: 40
"""

from __future__ import annotations

import copy
import datetime
import importlib
import inspect
import os
from argparse import Namespace
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError
from .argtypes import check_types
from .problems import INVALID, KeyPath, Problems, show, suggest

__all__ = [
    "ComponentSpec",
    "INJECTED_ARGS",
    "ALIASES",
    "canonical",
    "import_target",
    "check_plain",
    "convert_component",
    "instantiate",
    "as_namespace",
]

#: What the trainer passes positionally before a component's own kwargs.
INJECTED_ARGS: dict[str, tuple[str, ...]] = {
    "optimizer": ("the model parameters",),
    "scheduler": ("the optimizer",),
}


@dataclass
class ComponentSpec:
    """A ``_component_`` section: the import path, its keyword arguments, and (model only) initial weights."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # model._weights_: safetensors file with initial weights
    section: str = ""  # "model", "data", ... (used in error messages)
    namespaces: list[str] = field(default_factory=list)  # _namespace_: kwargs passed as attribute namespaces


_PLAIN = (type(None), bool, int, float, str, bytes, datetime.date)


#: Component paths of earlier releases, which checkpoints store in their recipes: old prefix -> new prefix.
ALIASES: dict[str, str] = {
    "relaxcli.models.": "relaxcli.tasks.",
    "relaxcli.data.": "relaxcli.tasks.",
    "relaxcli.program.": "relaxcli.ops.program.",
    "relaxcli.vn.": "relaxcli.ops.vector_neurons.",
    "relaxcli.steerable.": "relaxcli.ops.steerable.",
}


#: While a recipe read from a file (a checkpoint's, or a run directory's on --resume) is validated without trust: the
#: test of what such a file may name (:func:`relaxcli.recipe.trust.allowed`), which :func:`import_target` applies.
ALLOWLIST: ContextVar[Callable[[str], bool] | None] = ContextVar("relaxcli_allowlist", default=None)


def canonical(target: str) -> str:
    """``target`` with an earlier release's module path replaced by today's (``relaxcli.models.SEGNN`` ->
    ``relaxcli.tasks.SEGNN``); other paths unchanged."""
    for old, new in ALIASES.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


def import_target(target: str) -> tuple[Any, str | None]:
    """Import ``a.b.C`` (an earlier release's path is read as today's, see :data:`ALIASES`). Returns (object, None)
    or (None, reason). While :data:`ALLOWLIST` is set, a path off the allowlist (:mod:`.trust`) is refused, not
    imported."""
    allowed = ALLOWLIST.get()
    if allowed is not None and not allowed(target):
        return None, "a file may not name it without your say-so (see 'Security' in the README)"
    parts = canonical(target).split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None, "expected a dotted import path such as 'torch.nn.Linear'"
    module, n = None, len(parts)
    for n in range(len(parts), 0, -1):  # the longest importable prefix is the module
        name = ".".join(parts[:n])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                return None, f"{type(exc).__name__}: {exc}"  # a dependency of the module is missing
            if n == 1:
                return None, f"no module named {parts[0]!r}"
        except Exception as exc:  # the module exists but fails to import
            return None, f"importing {name} raised {type(exc).__name__}: {exc}"
    obj: Any = module
    for i in range(n, len(parts)):
        if not hasattr(obj, parts[i]):
            owner = ".".join(parts[:i])
            names = [a for a in dir(obj) if not a.startswith("_")]
            return None, f"{owner!r} has no attribute {parts[i]!r}{suggest(parts[i], names)}"
        obj = getattr(obj, parts[i])
    return obj, None


def check_plain(value: Any, path: KeyPath, ctx: Problems) -> bool:
    """Component kwargs must be plain YAML values (they are dumped and stored in checkpoints)."""
    if isinstance(value, dict):
        ok = True
        for k, v in value.items():
            if not isinstance(k, str):
                ctx.add(path, f"keys must be strings, got {show(k)}")
                ok = False
            ok = check_plain(v, path + (str(k),), ctx) and ok
        return ok
    if isinstance(value, list):
        return all([check_plain(v, path + (i,), ctx) for i, v in enumerate(value)])
    if not isinstance(value, _PLAIN):
        ctx.add(path, f"not a plain YAML value: {show(value)}")
        return False
    return True


def convert_component(value: Any, path: KeyPath, ctx: Problems) -> Any:
    section = str(path[-1])
    if not isinstance(value, dict):
        ctx.add(path, f"expected a mapping with '_component_', got {show(value)}")
        return INVALID
    before = ctx.count()
    reserved = ["_component_", "_weights_", "_namespace_"] if section == "model" else ["_component_", "_namespace_"]
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str):
            ctx.add(path, f"keys must be strings, got {show(key)}")
        elif key.startswith("_") and key.endswith("_") and key not in reserved:
            hint = " (only allowed in model)" if key == "_weights_" else suggest(key, reserved)
            ctx.add(path + (key,), f"unknown reserved key{hint}")
        elif key not in reserved:
            check_plain(v, path + (key,), ctx)
            kwargs[key] = v

    target = value.get("_component_")
    if "_component_" not in value:
        ctx.add(path + ("_component_",), "missing required key")
    elif not isinstance(target, str):
        ctx.add(path + ("_component_",), f"expected a dotted import path string, got {show(target)}")

    namespaces = _namespaces(value.get("_namespace_"), kwargs, path + ("_namespace_",), ctx)
    weights = value.get("_weights_") if section == "model" else None
    if weights is not None:
        if not isinstance(weights, str) or not weights:
            ctx.add(path + ("_weights_",), f"expected a path to a safetensors file, got {show(weights)}")
        elif ctx.base_dir is not None:  # loaded from a file: resolve and check
            resolved = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(weights)))
            if not os.path.isfile(resolved):
                ctx.add(path + ("_weights_",), f"file not found: {resolved}")
            weights = resolved

    if isinstance(target, str):
        obj, reason = import_target(target)
        if reason is not None:
            ctx.add(path + ("_component_",), f"cannot import {target}: {reason}")
        elif not callable(obj):
            ctx.add(path + ("_component_",), f"{target} is not callable (it is a {type(obj).__name__})")
        else:
            check_signature(obj, target, kwargs, path, ctx)
    if ctx.count() != before:
        return INVALID
    return ComponentSpec(
        target=canonical(str(target)), kwargs=kwargs, weights=weights, section=section, namespaces=namespaces
    )


def _namespaces(value: Any, kwargs: dict[str, Any], path: KeyPath, ctx: Problems) -> list[str]:
    """The kwargs that ``_namespace_`` names (a name or a list of names), each of which must be a mapping."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        ctx.add(
            path,
            f"expected the name of a keyword argument, or a list of them, to pass as an attribute namespace "
            f"(e.g. [args]), got {show(value)}",
        )
        return []
    for name in names:
        if name not in kwargs:
            given = [k for k in kwargs if isinstance(kwargs[k], dict)]
            ctx.add(path, f"names {name!r}, which is not a keyword argument of this section{suggest(name, given)}")
        elif not isinstance(kwargs[name], dict):
            ctx.add(
                path,
                f"names {name!r}, whose value {show(kwargs[name])} is not a mapping; give it as a mapping of the "
                f"attributes the callable reads ({name}: {{n_knn: 20}})",
            )
    return list(names)


def as_namespace(value: Any) -> Any:
    """A mapping as an ``argparse.Namespace`` (mappings inside it too); anything else unchanged.

    Example:
        >>> as_namespace({"n_knn": 20, "model": {"width": 8}}).model.width
        8
    """
    if isinstance(value, dict):
        return Namespace(**{str(k): as_namespace(v) for k, v in value.items()})
    return value


def check_signature(obj: Any, target: str, kwargs: dict[str, Any], path: KeyPath, ctx: Problems) -> None:
    """Report unknown, missing and trainer-supplied keyword arguments of a component, and values of the wrong type
    (see :func:`~relaxcli.recipe.argtypes.check_types`)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # builtins and some C extensions: nothing to check against
    section = str(path[-1])
    injected = INJECTED_ARGS.get(section, ())
    params = list(sig.parameters.values())
    P = inspect.Parameter
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    takes_var_pos = any(p.kind is P.VAR_POSITIONAL for p in params)
    if len(positional) < len(injected) and not takes_var_pos:
        what = ", ".join(injected)
        ctx.add(path + ("_component_",), f"{target} must accept {what} as its first positional argument")
        return
    supplied = {p.name: what for p, what in zip(positional, injected)}
    accepts_any = any(p.kind is P.VAR_KEYWORD for p in params)
    names = [p.name for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) and p.name not in supplied]
    before = ctx.count()
    for key in kwargs:
        if key in supplied:
            ctx.add(path + (key,), f"is supplied by the trainer ({supplied[key]}); remove it")
        elif key not in names and not accepts_any:
            ctx.add(path + (key,), f"unknown argument of {target}{suggest(key, names)}")
    for p in params:
        required = p.default is P.empty and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
        if required and p.name not in supplied and p.name not in kwargs:
            ctx.add(path + (p.name,), f"missing required argument of {target}")
    check_types(obj, target, {k: v for k, v in kwargs.items() if k in names}, path, ctx)  # lr: "abc", lr: .inf
    if ctx.count() == before:
        try:
            sig.bind(*injected, **kwargs)
        except TypeError as exc:
            ctx.add(path, f"cannot call {target} with these arguments: {exc}")


def instantiate(spec: ComponentSpec, *args: Any, **extra_kwargs: Any) -> Any:
    """Import ``spec.target`` and call it with ``*args`` and the recipe's kwargs (``extra_kwargs`` win).

    Any exception from the constructor becomes a short RecipeError naming the section.
    Does not load ``spec.weights``: the caller does that.

    Example::

        model = instantiate(recipe.model)
        optimizer = instantiate(recipe.optimizer, model.parameters())
    """
    section = spec.section or "component"
    obj, reason = import_target(spec.target)
    if reason is not None:
        raise RecipeError([f"{section}: cannot import {spec.target}: {reason}"])
    kwargs = copy.deepcopy(spec.kwargs)
    for name in spec.namespaces:  # _namespace_: read as args.n_knn, not args["n_knn"]
        kwargs[name] = as_namespace(kwargs[name])
    try:
        return obj(*args, **{**kwargs, **extra_kwargs})
    except Exception as exc:
        message = str(exc).strip() or type(exc).__name__
        if len(message) > 300:
            message = message[:297] + "..."
        # "num_layers must be >= 1, got -1": the message names one of the recipe's keys, so the problem does too
        key = next((k for k in spec.kwargs if message.split(" ", 1)[0].strip(":'\"`") == k), None)
        where = f"{section}.{key}" if key else section
        raise RecipeError([f"{where}: {spec.target}(...) failed: {message}"]) from exc
