"""Component keyword arguments against the callable's own types: ``optimizer.lr: "abc"`` or ``hidden_irreps: 5`` is a
recipe problem that names the key, the value and the expected type, not a ``TypeError`` from deep inside torch.

A keyword is judged by its annotation where that can be judged for a plain YAML value (``int``, ``float``, ``bool``,
``str``, ``None``, ``Literal``, unions, lists and tuples of those), else by its default's type (a number, a string, a
bool, a tuple or list); a ``None`` default or an annotation such as ``torch.Tensor`` or ``Any`` says nothing, and the
keyword is left to the callable. Numbers must also be finite (``.inf``/``.nan``) and integers fit in 64 bits, unless the
default itself does not.

Example::

    check_types(torch.optim.Adam, "torch.optim.Adam", {"lr": "abc"}, ("optimizer",), ctx)
    # optimizer.lr: expected a number (as the default of torch.optim.Adam's lr, 0.001), got 'abc' (str)
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import math
import sys
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

from .problems import KeyPath, Problems, show

__all__ = ["INT64", "finite_float", "judge", "describe", "check_types"]

#: Integers a recipe may hold: torch, numpy and the seeding functions take signed 64-bit integers.
INT64 = 2**63

_SEQUENCES = (cabc.Sequence, cabc.MutableSequence, cabc.Iterable, cabc.Collection)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)


def finite_float(value: Any) -> Optional[float]:
    """``value`` (an int or float) as a finite float, or None when it is inf, nan or too large for a float."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def judge(value: Any, tp: Any) -> Optional[bool]:
    """Whether a plain YAML ``value`` fits the annotation ``tp``: True, False, or None when ``tp`` cannot say (a
    class that the callable may build from anything, ``Any``, a string annotation that did not resolve, ...)."""
    if tp is Any:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return judge(value, args[0])
    if origin in (Union, types.UnionType):
        verdicts = [judge(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if tp is None or tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (float, complex):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):  # YAML sequences are lists; the trainer passes them as they are
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            return _all([judge(v, a) for v, a in zip(value, args)])
        return _all([judge(v, args[0]) for v in value]) if args else True
    if tp in _SEQUENCES or origin in _SEQUENCES:
        if isinstance(value, list):
            return _all([judge(v, args[0]) for v in value]) if args else True
        return None if isinstance(value, (str, dict)) else False
    if tp in _MAPPINGS or origin in _MAPPINGS:
        return isinstance(value, dict)
    try:
        if isinstance(tp, type) and tp is not object and isinstance(value, tp):
            return True
    except TypeError:  # a Protocol that is not runtime-checkable, and the like
        pass
    return None


def _all(verdicts: list[Optional[bool]]) -> Optional[bool]:
    return False if False in verdicts else (None if None in verdicts else True)


def describe(tp: Any) -> str:
    """A judged annotation in words, for "expected ..." messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return describe(args[0])
    if origin in (Union, types.UnionType):  # the members a YAML value can be (not torch.Tensor, ...)
        parts = [describe(a) for a in args if a is not type(None) and judge(None, a) is not None] or ["a value"]
        return " or ".join(dict.fromkeys(parts)) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = list(dict.fromkeys(describe(a) for a in args))
        return (
            f"a list of {len(args)} {_plural(items[0])}"
            if len(items) == 1
            else f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        )
    if tp in (list, tuple) or origin in (list, tuple) or tp in _SEQUENCES or origin in _SEQUENCES:
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if tp in _MAPPINGS or origin in _MAPPINGS:
        return "a mapping"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        complex: "a number",
        str: "a string",
        type(None): "null",
        None: "null",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(text: str) -> str:
    words = {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans"}
    return words.get(text, text)


def _default_type(default: Any) -> Any:
    """The annotation a default implies, or None when it implies none (``None``, objects)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float  # an int default (``momentum=0``) takes floats too
    if isinstance(default, str):
        return str
    if isinstance(default, tuple) and default:  # betas=(0.9, 0.999): a list of as many, each like its default
        return tuple[tuple(_default_type(d) or Any for d in default)]  # type: ignore[misc]
    if isinstance(default, (tuple, list)):
        return list
    return None


def check_types(obj: Any, target: str, kwargs: dict[str, Any], path: KeyPath, ctx: Problems) -> None:
    """Report each keyword argument in ``kwargs`` whose value does not fit ``obj``'s annotation (or its default's
    type), and non-finite numbers; keywords the callable does not name are left alone (see ``check_signature``)."""
    try:
        sig = inspect.signature(obj, eval_str=True)
    except Exception:  # one annotation that does not resolve: resolve the others one by one
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return
    for key, value in kwargs.items():
        p = sig.parameters.get(key)
        if p is None or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = _resolve(obj, p.annotation)
        default = None if p.default is p.empty else p.default
        verdict = judge(value, ann) if ann is not None else None
        source = f"as annotated in {target}"
        if verdict is None and _default_type(default) is not None:
            ann = _default_type(default)
            verdict = judge(value, ann)
            source = f"as the default of {target}'s {key}, {default!r}"
        if verdict is False:
            ctx.add(path + (key,), f"expected {describe(ann)} ({source}), got {show(value)}")
        elif verdict and _has_nonfinite(value) and not _has_nonfinite(default):
            ctx.add(path + (key,), f"must be a finite number, got {show(value)}")
        elif verdict and _has_huge(value) and not _has_huge(default):
            ctx.add(path + (key,), f"must fit in a 64-bit integer (below 2**63), got {show(value)}")


def _resolve(obj: Any, annotation: Any) -> Any:
    """An annotation as a type: a string one (``from __future__ import annotations``) evaluated in the callable's
    module, with the names of ``typing`` and ``collections.abc`` (often imported for type checkers only); None when it
    is absent or does not resolve. The strings come from the callable's source code, not from the recipe."""
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    namespace = {**vars(cabc), **{k: getattr(typing, k) for k in typing.__all__}, **(vars(module) if module else {})}
    try:
        return eval(annotation, namespace)
    except Exception:
        return None


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_has_nonfinite(v) for v in value)
    return False


def _has_huge(value: Any) -> bool:
    """An integer torch and numpy cannot hold (``lr: 1e400`` written out, ``num_layers: 2**70``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return not -INT64 <= value < INT64
    if isinstance(value, (list, tuple)):
        return any(_has_huge(v) for v in value)
    return False
