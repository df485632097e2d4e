"""Validation: one generic walker over the schema's dataclasses and type hints, collecting every problem."""

from __future__ import annotations

import copy
import os
import stat
import types
import typing
from collections.abc import Iterable
from dataclasses import MISSING, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from ..errors import RecipeError
from .argtypes import INT64, finite_float
from .components import ALLOWLIST, ComponentSpec, convert_component
from .overrides import apply_overrides
from .problems import INVALID, KeyPath, Problems, show, suggest
from .schema import Check, Recipe
from .trust import allowed, check_trusted
from .yaml_io import dump_yaml, parse_yaml

__all__ = ["load_recipe", "loads_recipe", "recipe_from_dict", "dump_recipe", "locate"]


# -----------------------------------------------------------------------------
# The generic walker over dataclasses and type hints


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    """Human description of a type hint, for "expected ..." messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        custom = [m.describe for m in tp.__metadata__ if isinstance(m, Check) and m.describe]
        return custom[0] if custom else _describe(args[0])
    if _is_union(tp):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return "a list of strings" if args and args[0] is str else "a list"
    if origin is dict:
        return "a mapping"
    if tp is ComponentSpec:
        return "a mapping with '_component_'"
    if is_dataclass(tp):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _accepts_null(tp: Any) -> bool:
    """Whether a type hint admits null (an ``Optional`` inside ``Annotated``)."""
    if typing.get_origin(tp) is Annotated:
        return _accepts_null(typing.get_args(tp)[0])
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _feature_mapping(value: Any) -> bool:
    """Whether a mapping is one tensor's symmetry spec with its axis (see ``relaxcli.core.symmetry.feature_spec``)."""
    from ..core.symmetry import is_feature_mapping  # lazily: it imports torch

    return is_feature_mapping(value)


def _scalar_ok(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is type(None):
        return value is None
    raise TypeError(f"recipe schema uses an unsupported type: {tp!r}")


def _convert(value: Any, tp: Any, path: KeyPath, ctx: Problems, expected: str | None = None) -> Any:
    """Check ``value`` against type hint ``tp``; return the converted value or ``INVALID``.

    ``expected`` replaces the type's description in a type-mismatch message (see ``Check.describe``).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def mismatch(hint: str = "") -> Any:
        ctx.add(path, f"expected {expected or _describe(tp)}, got {show(value)}{hint}")
        return INVALID

    if origin is Annotated:
        custom = [m.describe for m in tp.__metadata__ if isinstance(m, Check) and m.describe]
        before = ctx.count()
        out = _convert(value, args[0], path, ctx, expected or (custom[0] if custom else None))
        if out is INVALID or out is None or ctx.count() != before:
            return out
        for check in tp.__metadata__:
            problem = check.problem(out) if hasattr(check, "problem") else None
            if problem:
                ctx.add(path, problem)
                return INVALID
        return out

    if _is_union(tp):  # Optional[X], or X | list[...] | dict[...] told apart by the value's container type
        rest = [a for a in args if a is not type(None)]
        if value is None:
            return None if type(None) in args or any(_accepts_null(a) for a in rest) else mismatch()
        if len(rest) > 1:
            kind = list if isinstance(value, list) else dict if isinstance(value, dict) else None
            if kind is dict and _feature_mapping(value):
                kind = None  # one tensor's spec written as a mapping ({rep: ..., axis: 1}), not specs keyed by name
            chosen = [a for a in rest if typing.get_origin(a) is kind] or [
                a for a in rest if typing.get_origin(a) not in (list, dict)
            ]
            if len(chosen) != 1:
                return mismatch()
            return _convert(value, chosen[0], path, ctx, expected)
        inner = rest[0]
        if (
            typing.get_origin(inner) in (Annotated, Literal, list, dict)
            or is_dataclass(inner)
            or _scalar_ok(value, inner)
        ):
            return _convert(value, inner, path, ctx, expected)
        return mismatch()

    if origin is Literal:
        if any(type(value) is type(c) and value == c for c in args):
            return value
        choices = ", ".join(repr(c) for c in args)
        hint = suggest(value, [c for c in args if isinstance(c, str)]) if isinstance(value, str) else ""
        ctx.add(path, f"must be one of {choices}; got {show(value)}{hint}")
        return INVALID

    if origin is list:
        if not isinstance(value, list):
            return mismatch()
        items = [_convert(v, args[0] if args else Any, path + (i,), ctx) for i, v in enumerate(value)]
        return INVALID if any(x is INVALID for x in items) else items

    if origin is dict:  # a mapping with string keys
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return mismatch()
        entries = {k: _convert(v, args[1] if args else Any, path + (k,), ctx) for k, v in value.items()}
        return INVALID if any(x is INVALID for x in entries.values()) else entries

    if tp is ComponentSpec:
        return convert_component(value, path, ctx)

    if is_dataclass(tp):
        return _convert_dataclass(value, typing.cast(type, tp), path, ctx)

    if not _scalar_ok(value, tp):
        quoted = tp is bool and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off")
        return mismatch("; write true or false without quotes" if quoted else "")
    if tp is float:
        number = finite_float(value)
        if number is None:
            ctx.add(path, f"must be a finite number, got {show(value)}")
            return INVALID
        return number
    if tp is int and not -INT64 <= value < INT64:
        ctx.add(path, f"must fit in a 64-bit integer (below 2**63), got {show(value)}")
        return INVALID
    return value


def _convert_dataclass(value: Any, cls: type, path: KeyPath, ctx: Problems) -> Any:
    if value is None:  # "relax:" with every key commented out means "all defaults"
        value = {}
    if not isinstance(value, dict):
        ctx.add(path, f"expected {_describe(cls)}, got {show(value)}")
        return INVALID
    specs = [f for f in fields(cls) if not f.metadata.get("internal")]
    names = [f.name for f in specs]
    before = ctx.count()
    for key in value:
        if key not in names:
            hint = suggest(key, names) or "; expected one of: " + ", ".join(names)
            ctx.add(path + (key,), f"unknown key{hint}")
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in specs:
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints[f.name], path + (f.name,), ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            ctx.add(path + (f.name,), "missing required key")
    if ctx.count() != before:
        return INVALID
    obj = cls(**kwargs)
    for key, message in obj.check(value) if hasattr(obj, "check") else ():
        ctx.add(path + (key,), message)
    return obj


def _validate(
    data: Any,
    source: str,
    lines: dict[KeyPath, int],
    base_dir: Path | None,
    overrides: Iterable[str] = (),
    early: Iterable[tuple[KeyPath, str]] = (),
    trust: bool = True,
) -> Recipe:
    """Apply overrides to ``data`` and validate it into a Recipe, or raise one RecipeError. Without ``trust`` (a
    recipe read from a file the user did not choose to run) a component off the allowlist raises a TrustError before
    anything is imported (see :mod:`.trust`)."""
    if data is None:
        needs = "name, model, data, optimizer and trainer"
        raise RecipeError([f"{source}: the recipe is empty; it needs at least {needs}"], source)
    if not isinstance(data, dict):
        where = f"{source}:1" if lines else source
        raise RecipeError([f"{where}: the recipe must be a mapping of sections, got {show(data)}"], source)
    ctx = Problems(source, lines, base_dir)
    for path, message in early:
        ctx.add(path, message)
    apply_overrides(data, overrides, ctx)
    if not trust:
        check_trusted(data, source)
    guard = ALLOWLIST.set(None if trust else allowed)  # import_target refuses what is off it, whoever asks
    try:
        recipe = _convert_dataclass(data, Recipe, (), ctx)
    finally:
        ALLOWLIST.reset(guard)
    problems = ctx.messages()
    if problems:
        raise RecipeError(problems, source)
    recipe.source = source
    return recipe


def loads_recipe(
    text: str,
    source: str = "<string>",
    overrides: Iterable[str] = (),
    base_dir: str | os.PathLike | None = None,
    *,
    trust: bool = True,
) -> Recipe:
    """Validate recipe YAML text (``base_dir`` resolves relative ``_weights_``; default: the cwd). ``trust=False``
    for text from a file the user did not choose to run: components off the allowlist raise a TrustError.

    Example::

        recipe = loads_recipe(dump_recipe(recipe))
    """
    if isinstance(overrides, str):  # a single override passed by mistake: not a list of characters
        overrides = [overrides]
    overrides = list(overrides or ())
    data, lines, dupes = parse_yaml(text, source)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _validate(data, source, lines, base, overrides, dupes, trust=trust)


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = (), *, trust: bool = True) -> Recipe:
    """Read, override and validate a recipe file; raise one RecipeError listing every problem. ``trust=False``
    for a file the user did not write or choose (a run directory's recipe on ``--resume``): see :func:`loads_recipe`.

    Example::

        recipe = load_recipe("recipes/tetris.yaml", ["trainer.epochs=5", "relax.theta.schedule=constant"])
    """
    source = os.fspath(path)
    p = Path(path)
    text = _read_recipe_file(p, source)
    return loads_recipe(text, source, overrides, base_dir=Path(os.path.abspath(p)).parent, trust=trust)


#: The largest recipe file read (a recipe is a few KiB).
MAX_RECIPE_BYTES = 1 << 20

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_recipe_file(p: Path, source: str) -> str:
    """The text of a recipe file: a regular file of at most :data:`MAX_RECIPE_BYTES`, else a RecipeError at once.

    The file is opened without blocking and checked on the open descriptor, so a FIFO (which would wait for a writer
    forever) or a device such as /dev/zero (endless) is refused before anything is read."""

    def refuse(message: str) -> RecipeError:
        return RecipeError([f"{source}: {message}"], source)

    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise refuse("file not found") from None
    except IsADirectoryError:
        raise refuse("is a directory; expected a YAML recipe file") from None
    except OSError as exc:
        raise refuse(f"cannot read: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise refuse("is a directory; expected a YAML recipe file")
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise refuse(f"is {kind}, not a regular file; give a YAML recipe file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read: {exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_RECIPE_BYTES:
        raise refuse(f"is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a few KiB of YAML")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"cannot read: {exc}") from None


def recipe_from_dict(data: Any, source: str = "<checkpoint>", *, trust: bool = True) -> Recipe:
    """Validate a plain dict (e.g. a recipe stored in checkpoint metadata) into a Recipe. With ``trust=False`` (what
    :func:`~relaxcli.run.checkpoint.load_checkpoint` passes for a file) a component off the allowlist raises a
    :class:`~relaxcli.errors.TrustError` before anything is imported.

    Relative ``_weights_`` paths are kept as they are and not checked for existence.

    Example::

        recipe = recipe_from_dict(json.loads(meta["recipe"]))
    """
    return _validate(copy.deepcopy(data), source, lines={}, base_dir=None, trust=trust)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML text, keys in schema order, every default filled in.

    Example::

        print(dump_recipe(load_recipe("recipe.yaml")))   # what --print-config shows
    """
    return dump_yaml(recipe.to_dict())


def locate(recipe: Recipe, key: KeyPath) -> str:
    """``file:line`` of ``key`` (the nearest enclosing key that has a line) in the file the recipe was read from;
    the file alone when it has none, or the recipe did not come from a readable file.

    Example::

        locate(recipe, ("symmetry", "inputs", 1))   # 'recipe.yaml:23'
    """
    source = recipe.source or "recipe"
    try:
        lines = parse_yaml(Path(source).read_text(encoding="utf-8"), source)[1]
    except Exception:  # not a file (a checkpoint's recipe, a string), or unreadable now: no line
        return source
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return f"{source}:{lines[key[:n]]}"
    return source
