"""Recipes: the YAML file that says what to train and how.

A recipe names its components by import path, torchtune style, and configures
the trainer and the constraint relaxation in small typed sections::

    name: tetris-relaxed
    seed: 0
    model:
      _component_: mypkg.models.Tetris
      hidden: 16x0e+16x1o
    data:
      _component_: mypkg.data.tetris
    optimizer:
      _component_: torch.optim.Adam
      lr: 1e-3
    trainer:
      epochs: 50
    relax:
      theta: {schedule: triangle, max: 1.0}

Loading checks everything at once (unknown keys, types, ranges, choices,
importable components, keyword arguments against signatures) and raises one
:class:`~relaxcli.errors.RecipeError` listing every problem with its line::

    recipe.yaml:12: relax.theta.shedule: unknown key; did you mean 'schedule'?

Typed sections are plain dataclasses validated by one generic walker
(:func:`_convert`), so adding a key or a subsection means editing a dataclass
and nothing else. Ranges and extra checks ride along as ``Annotated`` metadata;
a section's ``check(given_keys)`` method reports keys that conflict.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import importlib
import inspect
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal, Optional, Union

import yaml

from relaxcli.errors import RecipeError

__all__ = [
    "BranchConfig",
    "ComponentSpec",
    "INJECTED_ARGS",
    "Recipe",
    "RegularizerConfig",
    "RelaxConfig",
    "SymmetryConfig",
    "ThetaConfig",
    "TrainerConfig",
    "dump_recipe",
    "instantiate",
    "load_recipe",
    "loads_recipe",
]

# -----------------------------------------------------------------------------
# Field annotations: ranges and custom checks


@dataclass(frozen=True)
class Range:
    """Numeric bounds for an ``Annotated`` field, e.g. ``Annotated[int, Range(ge=1)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def problem(self, value: Any) -> str | None:
        if (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
        ):
            return None
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le))
        return f"must be {' and '.join(f'{op} {_num(b)}' for op, b in bounds if b is not None)}, got {_num(value)}"


@dataclass(frozen=True)
class Check:
    """A custom check for an ``Annotated`` field: ``fn(value)`` returns a problem or None."""

    fn: Callable[[Any], str | None]
    describe: str | None = None  # replaces the type's description in "expected ..." messages

    def problem(self, value: Any) -> str | None:
        return self.fn(value)


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _nonempty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _irreps_problem(value: str) -> str | None:
    if value.isidentifier():  # 'cartesian_points', or a model attribute (group: escnn); SymmetryConfig.check decides
        return None
    if not value.strip():
        return "empty Irreps string; use null for an input without symmetry"
    from e3nn import o3  # imported lazily: only recipes with a symmetry section pay for it

    try:
        o3.Irreps(value)
    except Exception:  # e3nn raises ValueError, but any failure means "not an Irreps"
        return f"invalid Irreps {value!r}; expected e.g. '1x1o' or '16x0e+16x1o', or 'cartesian_points'"
    return None


IrrepsSpec = Annotated[Optional[str], Check(_irreps_problem, "an e3nn Irreps string, 'cartesian_points', the name "
                                                          "of a model attribute (group: escnn) or null")]

# -----------------------------------------------------------------------------
# The schema

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


@dataclass
class TrainerConfig:
    epochs: Annotated[int, Range(ge=1)]
    batch_size: Annotated[int, Range(ge=1)] = 32
    eval_batch_size: Annotated[Optional[int], Range(ge=1)] = None  # None: same as batch_size
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    grad_clip: Annotated[Optional[float], Range(gt=0)] = None
    eval_every: Annotated[int, Range(ge=1)] = 1  # epochs
    checkpoint_every: Annotated[int, Range(ge=1)] = 1  # epochs
    log_every: Annotated[int, Range(ge=1)] = 10  # steps
    num_workers: Annotated[int, Range(ge=0)] = 0
    threads: Annotated[Optional[int], Range(ge=1)] = None  # torch CPU threads; None: torch's default
    max_steps: Annotated[Optional[int], Range(ge=1)] = None
    metrics: list[Literal["accuracy"]] = field(default_factory=list)  # reported beside the loss at every evaluation


@dataclass
class BranchConfig:
    init_std: Annotated[float, Range(ge=0)] = 1e-4


@dataclass
class RegularizerConfig:
    weight: Annotated[float, Range(ge=0)] = 0.01
    projection: bool = True
    lie: bool = True
    discrete: bool = True
    source: Literal["data", "weight"] = "data"
    rows: Annotated[Optional[int], Range(ge=1)] = 256  # max rows per site for data regularisers


@dataclass
class ThetaConfig:
    schedule: Literal["triangle", "constant", "linear", "cosine", "ace", "ace_elastic"] = "triangle"
    # hand schedules
    max: Annotated[float, Range(ge=0)] = 1.0
    granularity: Literal["step", "epoch"] = "step"
    end: Annotated[float, Range(gt=0, le=1)] = 1.0  # fraction of training after which theta is 0
    # ACE: theta becomes a learnable gamma per site
    dual_lr: Annotated[float, Range(gt=0)] = 0.01  # eta_d
    gamma_init: float = 1.0
    gamma_lr: Annotated[Optional[float], Range(gt=0)] = None  # optimiser lr for gamma (and u); None: the model's
    rho: Annotated[float, Range(gt=0)] = 1.0  # ace_elastic: price of slack

    _HAND = ("max", "granularity", "end")
    _ACE = ("dual_lr", "gamma_init", "gamma_lr")

    def check(self, given: Iterable[str]) -> list[tuple[str, str]]:
        """Keys set to a non-default value that the chosen schedule would ignore (key, problem)."""
        ace = self.schedule.startswith("ace")
        defaults = ThetaConfig()
        unused = [k for k in given if (k in (self._ACE if not ace else self._HAND)
                                       or (k == "rho" and self.schedule != "ace_elastic"))
                  and getattr(self, k) != getattr(defaults, k)]
        users = {"rho": "ace_elastic"} | {k: "ace and ace_elastic" for k in self._ACE} | \
            {k: "the hand schedules (triangle, constant, linear, cosine)" for k in self._HAND}
        return [(k, f"is not used by schedule {self.schedule!r}; it applies to {users[k]} only") for k in unused]


@dataclass
class OpConfig:
    """One ``relax.ops`` item: a user's equivariant layer class, and how O(3) acts on its feature and output."""

    layer: str  # import path of the layer class
    action: Literal["irreps", "vector_neurons"] = "irreps"
    # action irreps: e3nn irreps on the last axis; an attribute name of the layer, or the irreps themselves
    irreps_in: str = "irreps_in"
    irreps_out: str = "irreps_out"
    feature_arg: Annotated[int, Range(ge=0)] = 0  # position of the feature among the layer's arguments
    # action vector_neurons: [B, C, 3, ...] features; attribute names holding the channel counts, and the axes
    in_channels: str = "in_channels"
    out_channels: str = "out_channels"
    channel_axis: int = 1
    vector_axis: int = 2

    _IRREPS = ("irreps_in", "irreps_out", "feature_arg")
    _VN = ("in_channels", "out_channels", "channel_axis", "vector_axis")

    def check(self, given: Iterable[str]) -> list[tuple[str, str]]:
        """The layer class must import and be a ``torch.nn.Module``; keys of the other action are rejected."""
        from torch import nn

        problems = []
        cls, reason = _import_target(self.layer)
        if reason is not None:
            problems.append(("layer", f"cannot import {self.layer!r}: {reason}"))
        elif not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            problems.append(("layer", f"{self.layer!r} is not a torch.nn.Module class"))
        other = self._VN if self.action == "irreps" else self._IRREPS
        defaults = OpConfig(self.layer)  # stored recipes hold every key, at its default where unused
        problems += [(k, f"does not apply to action {self.action!r}") for k in given
                     if k in other and getattr(self, k) != getattr(defaults, k)]
        if self.action == "irreps":
            from e3nn import o3

            for key in ("irreps_in", "irreps_out"):
                spec = getattr(self, key)
                if not spec.isidentifier():
                    try:
                        o3.Irreps(spec)
                    except (ValueError, AssertionError):
                        problems.append((key, f"{spec!r} is neither an attribute name of the layer nor irreps "
                                              "such as '8x0e+4x1o'"))
        return problems


@dataclass
class RelaxConfig:
    enabled: bool = True
    mode: Literal["auto", "fx", "hooks"] = "auto"
    include: list[str] = field(default_factory=lambda: ["*"])  # fnmatch globs on module paths
    exclude: list[str] = field(default_factory=list)
    ops: list[OpConfig] = field(default_factory=list)  # the user's own equivariant layers, beside the built-in ones
    fuse: bool = True  # run an op and its branch as one product (op + θW) where the adapter can: VN linears, R2Conv
    branch: BranchConfig = field(default_factory=BranchConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    theta: ThetaConfig = field(default_factory=ThetaConfig)


@dataclass
class SymmetryConfig:
    inputs: list[IrrepsSpec]
    output: IrrepsSpec
    group: Literal["o3", "escnn"] = "o3"  # escnn: inputs/output name model attributes holding escnn FieldTypes
    parity: bool = True  # test improper rotations too (O(3)); false for SO(3)-only models
    translation: bool = True  # translate 'cartesian_points' inputs and outputs

    def check(self, given: Iterable[str]) -> list[tuple[str, str]]:
        """o3 specs are Irreps strings or 'cartesian_points'; escnn specs name model attributes (FieldTypes)."""
        problems = []
        specs = [(f"inputs[{i}]", spec) for i, spec in enumerate(self.inputs)] + [("output", self.output)]
        for key, spec in specs:
            if spec is None:
                continue
            if self.group == "o3" and spec.isidentifier() and spec != "cartesian_points":
                problems.append((key, f"{spec!r} is not an Irreps string such as '1x1o'; names of model attributes "
                                      "holding escnn FieldTypes need 'group: escnn'"))
            if self.group == "escnn" and (not spec.isidentifier() or spec == "cartesian_points"):
                problems.append((key, f"{spec!r}: with group escnn, give the name of the model attribute that holds "
                                      "the escnn FieldType of this tensor (e.g. in_type), or null"))
        if self.group == "escnn":
            problems += [(k, "does not apply to group escnn (every element of the escnn group is tested)")
                         for k in ("parity", "translation") if k in given and getattr(self, k) is not True]
        return problems


def _default_loss() -> ComponentSpec:
    return ComponentSpec("torch.nn.MSELoss", {}, section="loss")


@dataclass(kw_only=True)
class Recipe:
    """A validated recipe. Build one with :func:`load_recipe` or :meth:`Recipe.from_dict`.

    Example::

        recipe = load_recipe("recipe.yaml", ["trainer.epochs=5"])
        model = instantiate(recipe.model)
        opt = instantiate(recipe.optimizer, model.parameters())
    """

    name: Annotated[str, Check(_nonempty)]
    seed: Annotated[Optional[int], Range(ge=0)] = None
    model: ComponentSpec
    data: ComponentSpec
    loss: ComponentSpec = field(default_factory=_default_loss)
    optimizer: ComponentSpec
    scheduler: Optional[ComponentSpec] = None
    trainer: TrainerConfig
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    symmetry: Optional[SymmetryConfig] = None
    source: Optional[str] = field(default=None, compare=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able dict with every default filled in; components in ``_component_`` form.

        Example::

            d = recipe.to_dict(); d["trainer"]["epochs"]  # -> 50
        """
        return _to_plain(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "<checkpoint>") -> Recipe:
        """Validate a plain dict (e.g. a recipe stored in checkpoint metadata) into a Recipe.

        Relative ``_weights_`` paths are kept as they are and not checked for existence.

        Example::

            recipe = Recipe.from_dict(json.loads(meta["recipe"]))
        """
        return _validate(copy.deepcopy(d), source, lines={}, base_dir=None)


# -----------------------------------------------------------------------------
# YAML: a safe loader that also reads 1e-3 as a float (PyYAML needs "1.0e-3")

_FLOAT = "tag:yaml.org,2002:float"
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _with_float_resolver(cls: type) -> type:
    cls.yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT]
        for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    cls.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
    return cls


@_with_float_resolver
class _Loader(yaml.SafeLoader):
    pass


@_with_float_resolver
class _Dumper(yaml.SafeDumper):
    """Same resolvers as the loader, so a string like '1e-3' gets quoted on dump."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)  # [a, b] for short scalar lists
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)

Path_ = tuple[Union[str, int], ...]  # a key path, e.g. ("relax", "theta", "schedule")


def _line_map(node: yaml.Node, problems: list[tuple[Path_, str]]) -> dict[Path_, int]:
    """Map every key path in a composed YAML document to its (1-based) line. Flags duplicate keys."""
    lines: dict[Path_, int] = {}
    stack: set[int] = set()

    def walk(n: yaml.Node, path: Path_, merged: bool = False) -> None:
        if id(n) in stack:  # recursive anchors
            return
        stack.add(id(n))
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                if k.tag == "tag:yaml.org,2002:merge":  # "<<: *base": keys defined here win
                    for m in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                        walk(m, path, merged=True)
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    continue
                key, line = k.value, k.start_mark.line + 1
                if key in seen and not merged:
                    message = f"duplicate key (first on line {seen[key]}); YAML keeps the last one"
                    problems.append((path + (key,), message))
                seen[key] = line
                if merged and path + (key,) in lines:
                    continue
                lines[path + (key,)] = line
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))
        stack.discard(id(n))

    walk(node, ())
    return lines


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int], list[tuple[Path_, str]]]:
    """Parse YAML text safely. Returns (data, lines, duplicate-key problems)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        detail = exc.problem or "parse error"
        if exc.context:
            detail += f" ({exc.context})"
        raise RecipeError([f"{where}: invalid YAML: {detail}"], source) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{source}: invalid YAML: {exc}"], source) from None
    dupes: list[tuple[Path_, str]] = []
    lines = _line_map(node, dupes) if node is not None else {}
    return data, lines, dupes


# -----------------------------------------------------------------------------
# Problem collection


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    """A value for an error message: short repr plus its YAML-ish type."""
    if value is None:
        return "null"
    kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind.get(type(value), type(value).__name__)})"


def _suggest(word: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'x'?" (or ""): close matches by difflib, case-insensitive, near the best one only."""
    by_lower = {c.lower(): c for c in candidates if isinstance(c, str)}
    scored = []
    for low, original in by_lower.items():
        ratio = difflib.SequenceMatcher(None, str(word).lower(), low).ratio()
        if ratio >= 0.6:
            scored.append((ratio, original))
    if not scored:
        return ""
    best = max(r for r, _ in scored)
    close = [c for r, c in sorted(scored, key=lambda x: -x[0]) if r >= best - 0.1][:3]
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


class _Ctx:
    """Collects problems during validation and knows where each key path came from."""

    def __init__(self, source: str, lines: dict[Path_, int], base_dir: Path | None) -> None:
        self.source, self.lines, self.base_dir = source, lines, base_dir
        self.origins: dict[Path_, tuple[int, str]] = {}  # key path -> (override index, "override '...'")
        self.problems: list[tuple[int, int, str]] = []  # (group, line or override index, message)

    def add(self, path: Path_, message: str) -> None:
        """Record a problem at ``path``; the most specific known location (override or line) wins."""
        group, order, loc = 1, 0, self.source  # group 0: file lines, 1: no line, 2: overrides
        prefixes = [path[:i] for i in range(len(path), -1, -1)]
        overridden = [p for p in prefixes if p in self.origins]  # an override replaces the whole subtree
        if overridden:
            (order, loc), group = self.origins[overridden[0]], 2
        else:
            known = [p for p in prefixes if p in self.lines]
            if known:
                order, group = self.lines[known[0]], 0
                loc = f"{self.source}:{order}"
        where = f"{_dotted(path)}: " if path else ""
        self.problems.append((group, order, f"{loc}: {where}{message}"))

    def count(self) -> int:
        return len(self.problems)

    def messages(self) -> list[str]:
        return [m for _, _, m in sorted(self.problems, key=lambda p: (p[0], p[1]))]


_INVALID = object()  # marks a value that failed validation (its problem is already recorded)

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
    if tp is ComponentSpec:
        return "a mapping with '_component_'"
    if is_dataclass(tp):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


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


def _convert(value: Any, tp: Any, path: Path_, ctx: _Ctx, expected: str | None = None) -> Any:
    """Check ``value`` against type hint ``tp``; return the converted value or ``_INVALID``.

    ``expected`` replaces the type's description in a type-mismatch message (see ``Check.describe``).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def mismatch(hint: str = "") -> Any:
        ctx.add(path, f"expected {expected or _describe(tp)}, got {_show(value)}{hint}")
        return _INVALID

    if origin is Annotated:
        custom = [m.describe for m in tp.__metadata__ if isinstance(m, Check) and m.describe]
        before = ctx.count()
        out = _convert(value, args[0], path, ctx, expected or (custom[0] if custom else None))
        if out is _INVALID or out is None or ctx.count() != before:
            return out
        for check in tp.__metadata__:
            problem = check.problem(out) if hasattr(check, "problem") else None
            if problem:
                ctx.add(path, problem)
                return _INVALID
        return out

    if _is_union(tp):  # only Optional[X] is used in the schema
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"recipe schema uses an unsupported union: {tp!r}")
        if value is None:
            return None if type(None) in args else mismatch()
        inner = rest[0]
        if typing.get_origin(inner) in (Annotated, Literal, list) or is_dataclass(inner) or _scalar_ok(value, inner):
            return _convert(value, inner, path, ctx, expected)
        return mismatch()

    if origin is Literal:
        if any(type(value) is type(c) and value == c for c in args):
            return value
        choices = ", ".join(repr(c) for c in args)
        hint = _suggest(value, [c for c in args if isinstance(c, str)]) if isinstance(value, str) else ""
        ctx.add(path, f"must be one of {choices}; got {_show(value)}{hint}")
        return _INVALID

    if origin is list:
        if not isinstance(value, list):
            return mismatch()
        items = [_convert(v, args[0] if args else Any, path + (i,), ctx) for i, v in enumerate(value)]
        return _INVALID if any(x is _INVALID for x in items) else items

    if tp is ComponentSpec:
        return _convert_component(value, path, ctx)

    if is_dataclass(tp):
        return _convert_dataclass(value, tp, path, ctx)

    if not _scalar_ok(value, tp):
        quoted = tp is bool and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off")
        return mismatch("; write true or false without quotes" if quoted else "")
    return float(value) if tp is float else value


def _convert_dataclass(value: Any, cls: type, path: Path_, ctx: _Ctx) -> Any:
    if value is None:  # "relax:" with every key commented out means "all defaults"
        value = {}
    if not isinstance(value, dict):
        ctx.add(path, f"expected {_describe(cls)}, got {_show(value)}")
        return _INVALID
    specs = [f for f in fields(cls) if not f.metadata.get("internal")]
    names = [f.name for f in specs]
    before = ctx.count()
    for key in value:
        if key not in names:
            hint = _suggest(key, names) or "; expected one of: " + ", ".join(names)
            ctx.add(path + (key,), f"unknown key{hint}")
    kwargs: dict[str, Any] = {}
    hints = _hints(cls)
    for f in specs:
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints[f.name], path + (f.name,), ctx)
        elif f.default is MISSING and f.default_factory is MISSING:
            ctx.add(path + (f.name,), "missing required key")
    if ctx.count() != before:
        return _INVALID
    obj = cls(**kwargs)
    for key, message in obj.check(value) if hasattr(obj, "check") else ():
        ctx.add(path + (key,), message)
    return obj


# -----------------------------------------------------------------------------
# Components: import paths and signature binding

_PLAIN = (type(None), bool, int, float, str, bytes, datetime.date)


def _import_target(target: str) -> tuple[Any, str | None]:
    """Import ``a.b.C``. Returns (object, None) or (None, reason)."""
    parts = target.split(".")
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
            return None, f"{owner!r} has no attribute {parts[i]!r}{_suggest(parts[i], names)}"
        obj = getattr(obj, parts[i])
    return obj, None


def _check_plain(value: Any, path: Path_, ctx: _Ctx) -> bool:
    """Component kwargs must be plain YAML values (they are dumped and stored in checkpoints)."""
    if isinstance(value, dict):
        ok = True
        for k, v in value.items():
            if not isinstance(k, str):
                ctx.add(path, f"keys must be strings, got {_show(k)}")
                ok = False
            ok = _check_plain(v, path + (str(k),), ctx) and ok
        return ok
    if isinstance(value, list):
        return all([_check_plain(v, path + (i,), ctx) for i, v in enumerate(value)])
    if not isinstance(value, _PLAIN):
        ctx.add(path, f"not a plain YAML value: {_show(value)}")
        return False
    return True


def _convert_component(value: Any, path: Path_, ctx: _Ctx) -> Any:
    section = str(path[-1])
    if not isinstance(value, dict):
        ctx.add(path, f"expected {_describe(ComponentSpec)}, got {_show(value)}")
        return _INVALID
    before = ctx.count()
    reserved = ["_component_", "_weights_"] if section == "model" else ["_component_"]
    kwargs: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str):
            ctx.add(path, f"keys must be strings, got {_show(key)}")
        elif key.startswith("_") and key.endswith("_") and key not in reserved:
            hint = " (only allowed in model)" if key == "_weights_" else _suggest(key, reserved)
            ctx.add(path + (key,), f"unknown reserved key{hint}")
        elif key not in reserved:
            _check_plain(v, path + (key,), ctx)
            kwargs[key] = v

    target = value.get("_component_")
    if "_component_" not in value:
        ctx.add(path + ("_component_",), "missing required key")
    elif not isinstance(target, str):
        ctx.add(path + ("_component_",), f"expected a dotted import path string, got {_show(target)}")

    weights = value.get("_weights_") if section == "model" else None
    if weights is not None:
        if not isinstance(weights, str) or not weights:
            ctx.add(path + ("_weights_",), f"expected a path to a safetensors file, got {_show(weights)}")
        elif ctx.base_dir is not None:  # loaded from a file: resolve and check
            resolved = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(weights)))
            if not os.path.isfile(resolved):
                ctx.add(path + ("_weights_",), f"file not found: {resolved}")
            weights = resolved

    if isinstance(target, str):
        obj, reason = _import_target(target)
        if reason is not None:
            ctx.add(path + ("_component_",), f"cannot import {target}: {reason}")
        elif not callable(obj):
            ctx.add(path + ("_component_",), f"{target} is not callable (it is a {type(obj).__name__})")
        else:
            _check_signature(obj, target, kwargs, path, ctx)
    if ctx.count() != before:
        return _INVALID
    return ComponentSpec(target=target, kwargs=kwargs, weights=weights, section=section)


def _check_signature(obj: Any, target: str, kwargs: dict[str, Any], path: Path_, ctx: _Ctx) -> None:
    """Report unknown, missing and trainer-supplied keyword arguments of a component."""
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
            ctx.add(path + (key,), f"unknown argument of {target}{_suggest(key, names)}")
    for p in params:
        required = p.default is P.empty and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
        if required and p.name not in supplied and p.name not in kwargs:
            ctx.add(path + (p.name,), f"missing required argument of {target}")
    if ctx.count() == before:
        try:
            sig.bind(*injected, **kwargs)
        except TypeError as exc:
            ctx.add(path, f"cannot call {target} with these arguments: {exc}")


# -----------------------------------------------------------------------------
# Overrides

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _apply_overrides(data: dict[str, Any], overrides: Iterable[str], ctx: _Ctx) -> None:
    """Apply ``a.b.c=value`` overrides to ``data`` in place, recording in ``ctx`` where each path came from."""
    for index, text in enumerate(overrides):
        where = f"override {text!r}"
        key, sep, raw = text.partition("=")
        key = key.strip()
        parts = key.split(".")

        def bad(message: str) -> None:
            ctx.problems.append((2, index, f"{where}: {message}"))

        if not sep or not key:
            bad("expected KEY=VALUE, e.g. trainer.epochs=5")
            continue
        if not all(_KEY_RE.match(p) for p in parts):
            extra = "; '+key' and '~key' are not supported: set the key directly" if key[0] in "+~" else ""
            bad(f"invalid key {key!r}{extra}")
            continue
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
        except yaml.YAMLError as exc:
            bad(f"invalid YAML value: {getattr(exc, 'problem', None) or exc}")
            continue
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent or null: create the mapping
                node[part] = {}
                ctx.origins.setdefault(tuple(parts[: i + 1]), (index, where))
            elif not isinstance(node[part], dict):
                bad(f"{'.'.join(parts[: i + 1])} is {_show(node[part])}, not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
            path = tuple(parts)
            for p in [p for p in ctx.origins if p[: len(path)] == path]:  # a later override replaces earlier ones
                del ctx.origins[p]
            ctx.origins[path] = (index, where)


# -----------------------------------------------------------------------------
# Public API


def _validate(
    data: Any,
    source: str,
    lines: dict[Path_, int],
    base_dir: Path | None,
    overrides: Iterable[str] = (),
    early: Iterable[tuple[Path_, str]] = (),
) -> Recipe:
    """Apply overrides to ``data`` and validate it into a Recipe, or raise one RecipeError."""
    if data is None:
        needs = "name, model, data, optimizer and trainer"
        raise RecipeError([f"{source}: the recipe is empty; it needs at least {needs}"], source)
    if not isinstance(data, dict):
        where = f"{source}:1" if lines else source
        raise RecipeError([f"{where}: the recipe must be a mapping of sections, got {_show(data)}"], source)
    ctx = _Ctx(source, lines, base_dir)
    for path, message in early:
        ctx.add(path, message)
    _apply_overrides(data, overrides, ctx)
    recipe = _convert_dataclass(data, Recipe, (), ctx)
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
) -> Recipe:
    """Validate recipe YAML text (``base_dir`` resolves relative ``_weights_``; default: the cwd).

    Example::

        recipe = loads_recipe(dump_recipe(recipe))
    """
    if isinstance(overrides, str):  # a single override passed by mistake: not a list of characters
        overrides = [overrides]
    overrides = list(overrides or ())
    data, lines, dupes = _parse_yaml(text, source)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _validate(data, source, lines, base, overrides, dupes)


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; raise one RecipeError listing every problem.

    Example::

        recipe = load_recipe("recipes/tetris.yaml", ["trainer.epochs=5", "relax.theta.schedule=constant"])
    """
    source = os.fspath(path)
    p = Path(path)
    if not p.exists():
        raise RecipeError([f"{source}: file not found"], source)
    if p.is_dir():
        raise RecipeError([f"{source}: is a directory; expected a YAML recipe file"], source)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError([f"{source}: cannot read: {exc}"], source) from None
    return loads_recipe(text, source, overrides, base_dir=Path(os.path.abspath(p)).parent)


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML text, keys in schema order, every default filled in.

    Example::

        print(dump_recipe(load_recipe("recipe.yaml")))   # what --print-config shows
    """
    return yaml.dump(recipe.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _to_plain(value: Any) -> Any:
    if isinstance(value, ComponentSpec):
        out: dict[str, Any] = {"_component_": value.target}
        if value.weights is not None:
            out["_weights_"] = value.weights
        out.update(copy.deepcopy(value.kwargs))
        return out
    if is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value) if not f.metadata.get("internal")}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


def instantiate(spec: ComponentSpec, *args: Any, **extra_kwargs: Any) -> Any:
    """Import ``spec.target`` and call it with ``*args`` and the recipe's kwargs (``extra_kwargs`` win).

    Any exception from the constructor becomes a short RecipeError naming the section.
    Does not load ``spec.weights``: the caller does that.

    Example::

        model = instantiate(recipe.model)
        optimizer = instantiate(recipe.optimizer, model.parameters())
    """
    section = spec.section or "component"
    obj, reason = _import_target(spec.target)
    if reason is not None:
        raise RecipeError([f"{section}: cannot import {spec.target}: {reason}"])
    try:
        return obj(*args, **{**copy.deepcopy(spec.kwargs), **extra_kwargs})
    except Exception as exc:
        message = str(exc).strip() or type(exc).__name__
        if len(message) > 300:
            message = message[:297] + "..."
        raise RecipeError([f"{section}: {spec.target}(...) failed: {message}"]) from exc
