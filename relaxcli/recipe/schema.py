"""The recipe schema: one plain dataclass per section (``trainer``, ``relax`` and its subsections, ``symmetry``),
and :class:`Recipe` holding them with the ``_component_`` sections.

Sections are validated by one generic walker (:mod:`.validate`), so adding a key or a subsection means editing a
dataclass here and nothing else. Ranges and extra checks ride along as ``Annotated`` metadata (:class:`Range`,
:class:`Check`); a section's ``check(given_keys)`` method reports keys that conflict. Names that a registry defines
(θ schedules, op actions, evaluation metrics) are checked against that registry, not listed here.

Example:
    >>> TrainerConfig(epochs=3).batch_size
    32
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Annotated, Any, Literal, Optional, Union

from .components import ComponentSpec, import_target
from .problems import show, suggest

__all__ = [
    "Range",
    "Check",
    "Recipe",
    "TrainerConfig",
    "BranchConfig",
    "RegularizerConfig",
    "ThetaConfig",
    "OpConfig",
    "RelaxConfig",
    "SymmetryConfig",
    "ForwardConfig",
    "to_plain",
]

# -----------------------------------------------------------------------------
# Field annotations: ranges and custom checks


@dataclass(frozen=True)
class Range:
    """Numeric bounds for an ``Annotated`` field, e.g. ``Annotated[int, Range(ge=1)]``. ``cap`` is an upper limit
    past which a value is surely a mistake (``epochs: 1e30``), reported on its own."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    cap: float | None = None

    def problem(self, value: Any) -> str | None:
        if self.cap is not None and value > self.cap:
            return f"must be <= {_num(self.cap)}, got {_num(value)}"
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


#: The largest float32: θ, γ and the branches' init_std become float32 (or float64) tensors.
FLOAT32_MAX = 3.4028234663852886e38


def _float32(value: float) -> str | None:
    return (
        None
        if abs(value) <= FLOAT32_MAX
        else f"must be at most {FLOAT32_MAX:.3g} in magnitude (it becomes a float32 tensor), got {value:g}"
    )


def _below_one(value: float) -> str | None:
    return None if value < 1 else f"must be < 1 (an EMA factor in [0, 1)), got {_num(value)}"


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


_SPEC = (
    "an e3nn Irreps string, 'cartesian_points', a mapping naming the axis the group acts on ({rep: "
    "cartesian_points, axis: 1}), the name of a model attribute (group: escnn) or null"
)


def _spec_problem(value: Any) -> str | None:
    """One tensor's spec: a string (see :func:`_irreps_problem`) or a mapping with the axis, which
    :func:`relaxcli.core.symmetry.feature_spec` parses."""
    if isinstance(value, str):
        return _irreps_problem(value)
    if isinstance(value, dict):
        from ..core.symmetry import feature_spec, is_feature_mapping  # lazily: torch and e3nn

        if not is_feature_mapping(value):
            return f"expected {_SPEC}; a mapping spec needs 'rep' and 'axis' keys, got {show(value)}"
        try:
            feature_spec(value)
        except ValueError as e:
            return str(e)
        return None
    return f"expected {_SPEC}, got {show(value)}"


IrrepsSpec = Annotated[Optional[Any], Check(_spec_problem, _SPEC)]

# -----------------------------------------------------------------------------
# The schema


@dataclass
class TrainerConfig:
    epochs: Annotated[int, Range(ge=1, cap=10**7)]
    batch_size: Annotated[int, Range(ge=1)] = 32
    eval_batch_size: Annotated[Optional[int], Range(ge=1)] = None  # None: same as batch_size
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    grad_clip: Annotated[Optional[float], Range(gt=0)] = None
    eval_every: Annotated[int, Range(ge=1)] = 1  # epochs
    checkpoint_every: Annotated[int, Range(ge=1)] = 1  # epochs
    log_every: Annotated[int, Range(ge=1)] = 10  # steps
    num_workers: Annotated[int, Range(ge=0, cap=256)] = 0
    threads: Annotated[Optional[int], Range(ge=1, cap=1024)] = None  # torch CPU threads; None: torch's default
    max_steps: Annotated[Optional[int], Range(ge=1)] = None
    # reported beside the loss at every evaluation; keys of relaxcli.run.evaluation.METRICS
    metrics: list[Annotated[str, Check(_metric_problem, "the name of an evaluation metric")]] = field(
        default_factory=list
    )


@dataclass
class BranchConfig:
    init_std: Annotated[float, Range(ge=0), Check(_float32)] = 1e-4


@dataclass
class RegularizerConfig:
    weight: Annotated[float, Range(ge=0)] = 0.01
    projection: bool = True
    lie: bool = True
    discrete: bool = True
    source: Literal["data", "weight"] = "data"
    rows: Annotated[Optional[int], Range(ge=1)] = 256  # max rows per site for data regularisers
    every: Annotated[int, Range(ge=1, cap=10**6)] = 1  # evaluate on every k-th step only, with weight k·λ
    # over rows and sites: mean row norm per site, summed; or rss, one root of summed squares per term (official code)
    reduce: Literal["mean", "rss"] = "mean"


def _one_of(value: str, registry: Iterable[str]) -> str | None:
    """None if ``value`` names an entry of ``registry``, else the problem (as for a ``Literal``)."""
    names = list(registry)
    return (
        None
        if value in names
        else f"must be one of {', '.join(map(repr, names))}; got {show(value)}{suggest(value, names)}"
    )


def _first(module: str, registry: str) -> str:
    """The first entry of a registry: its default."""
    import importlib

    return next(iter(getattr(importlib.import_module(module, __package__), registry)))


def _schedule_problem(value: str) -> str | None:
    from ..core.schedules import SCHEDULES

    return _one_of(value, SCHEDULES)


def _metric_problem(value: str) -> str | None:
    from ..run.evaluation import METRICS

    return _one_of(value, METRICS)


def _include_problem(value: str) -> str | None:
    if not value.startswith("@"):
        return None
    from ..core.presets import PRESETS

    return _one_of(value, PRESETS)


def _action_problem(value: str) -> str | None:
    from ..ops.registry import ACTIONS

    return _one_of(value, ACTIONS)


def _unused(
    section: Any, given: Iterable[str], used: tuple[str, ...], users: dict[str, list[str]], what: str
) -> list[tuple[str, str]]:
    """Keys given a non-default value that the chosen ``what`` does not read (key, problem)."""
    required = [f.name for f in fields(section) if f.default is MISSING and f.default_factory is MISSING]
    defaults = type(section)(**{k: getattr(section, k) for k in required})
    return [
        (k, f"is not used by {what}; it applies to {', '.join(users.get(k, ['none']))} only")
        for k in given
        if k in users and k not in used and getattr(section, k) != getattr(defaults, k)
    ]


@dataclass
class ThetaConfig:
    """``relax.theta``: the schedule (a key of ``relaxcli.core.schedules.SCHEDULES``) and its options; each
    schedule class lists the keys it reads (``recipe_keys``)."""

    schedule: Annotated[str, Check(_schedule_problem, "the name of a θ schedule")] = field(
        default_factory=lambda: _first("..core.schedules", "SCHEDULES")
    )
    # hand schedules
    max: Annotated[float, Range(ge=0), Check(_float32)] = 1.0
    granularity: Literal["step", "epoch"] = "step"
    end: Annotated[float, Range(gt=0, le=1)] = 1.0  # fraction of training after which theta is 0
    # ACE: theta becomes a learnable gamma per site
    dual_lr: Annotated[float, Range(gt=0)] = 0.01  # eta_d
    gamma_init: Annotated[float, Check(_float32)] = 1.0
    gamma_lr: Annotated[Optional[float], Range(gt=0)] = None  # optimiser lr for gamma (and u); None: the model's
    dual: Literal["ascent", "pi", "augmented"] = "pi"  # ace: the dual update (pi, augmented: damped; ascent: not)
    damping: Annotated[float, Range(ge=0), Check(_float32)] = 300.0  # ace: kappa_p (pi) or c (augmented)
    nu: Annotated[float, Range(ge=0), Check(_below_one)] = 0.0  # ace, dual pi: EMA of the proportional term (nuPI)
    rho: Annotated[float, Range(gt=0)] = 1.0  # ace_elastic: price of slack

    def options(self) -> dict[str, Any]:
        """The values of the keys the chosen schedule reads."""
        from ..core.schedules import SCHEDULES

        return {k: getattr(self, k) for k in SCHEDULES[self.schedule].recipe_keys}

    def check(self, given: Iterable[str]) -> list[tuple[str, str]]:
        from ..core.schedules import SCHEDULES

        users: dict[str, list[str]] = {}
        for name, cls in SCHEDULES.items():
            for key in cls.recipe_keys:
                users.setdefault(key, []).append(name)
        return _unused(self, given, SCHEDULES[self.schedule].recipe_keys, users, f"schedule {self.schedule!r}")


@dataclass
class OpConfig:
    """One ``relax.ops`` item: a user's equivariant layer class, and how O(3) acts on its feature and output. The
    action is a key of ``relaxcli.ops.registry.ACTIONS``; each action's adapter lists the keys it reads."""

    layer: str  # import path of the layer class
    action: Annotated[str, Check(_action_problem, "the name of an op action")] = field(
        default_factory=lambda: _first("..ops.registry", "ACTIONS")
    )
    subclasses: bool = True  # instances of subclasses of the layer class match too; false: the class itself only
    # action irreps: e3nn irreps on the last axis; an attribute name of the layer (dotted for a submodule's), or the
    # irreps themselves
    irreps_in: str = "irreps_in"
    irreps_out: str = "irreps_out"
    feature_arg: Annotated[int, Range(ge=0)] = 0  # position of the feature among the layer's arguments
    # action vector_neurons: [B, C, 3, ...] features; attribute names holding the channel counts (dotted for a
    # submodule's: map_to_feat.in_features; by default in_channels, else in_features, else the one 2-D weight's shape)
    in_channels: str = "in_channels"
    out_channels: str = "out_channels"
    channel_axis: Optional[int] = None  # null: -1 for torch.nn.Linear (the axis it maps), else 1
    vector_axis: Optional[int] = None  # null: found per call, the one other axis of size 3 (not the batch axis 0)
    layouts: dict[str, Any] = field(default_factory=dict)  # per path glob: {vector_axis: 2} or [channel, vector]

    def options(self) -> dict[str, Any]:
        """The values of the keys the chosen action reads."""
        from ..ops.registry import ACTIONS

        return {k: getattr(self, k) for k in ACTIONS[self.action].recipe_keys}

    def check(self, given: Iterable[str]) -> list[tuple[str, str]]:
        """The layer class must import and be a ``torch.nn.Module``; keys of another action are rejected; the
        action's adapter must accept the values."""
        from torch import nn

        from ..ops.registry import ACTIONS

        problems = []
        cls, reason = import_target(self.layer)
        if reason is not None:
            problems.append(("layer", f"cannot import {self.layer!r}: {reason}"))
        elif not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            problems.append(("layer", f"{self.layer!r} is not a torch.nn.Module class"))
        users: dict[str, list[str]] = {}
        for name, adapter in ACTIONS.items():
            for key in adapter.recipe_keys:
                users.setdefault(key, []).append(f"action {name!r}")
        problems += _unused(self, given, ACTIONS[self.action].recipe_keys, users, f"action {self.action!r}")
        if not problems:
            try:
                ACTIONS[self.action](self.layer, **self.options())
            except (TypeError, ValueError) as e:  # ValueError(key, message) names the key
                problems.append((e.args[0], e.args[1]) if len(e.args) == 2 else ("action", str(e)))
        return problems


@dataclass
class RelaxConfig:
    enabled: bool = True
    mode: Literal["auto", "fx", "hooks"] = "auto"
    # fnmatch globs on module paths, or presets by role: @node_update, @messages, @nodes (relaxcli.core.presets)
    include: list[
        Annotated[str, Check(_include_problem, "a glob on module paths or a preset such as '@node_update'")]
    ] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    ops: list[OpConfig] = field(default_factory=list)  # the user's own equivariant layers, beside the built-in ones
    fuse: bool = True  # run an op and its branch as one product (op + θW) where the adapter can: VN linears, R2Conv
    scalar_sites: bool = False  # also relax ops mapping invariants to invariants (0e -> 0e); they cannot break it
    branch: BranchConfig = field(default_factory=BranchConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    theta: ThetaConfig = field(default_factory=ThetaConfig)


@dataclass
class ForwardConfig:
    """``forward``: keyword arguments of every model call, beside the batch's inputs (MACE needs
    ``{training: true, compute_force: true}``). ``eval_kwargs`` replace them in evaluation, the dry run and the
    equivariance checks (default: ``kwargs``)."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    eval_kwargs: Optional[dict[str, Any]] = None

    def call_kwargs(self, training: bool) -> dict[str, Any]:
        """The keyword arguments of a training call, or of an evaluation call."""
        return dict(self.kwargs if training or self.eval_kwargs is None else self.eval_kwargs)


@dataclass
class SymmetryConfig:
    """``symmetry``: how the group acts on each model input and on the output. ``inputs`` is a list (one spec per
    positional input) or, for a model called with a dict of tensors (keyword arguments, or one dict argument as in
    MACE), a mapping from dict keys to specs; keys it does not name are left alone. ``output`` is one spec, or for
    a dict output a mapping naming the entries to check (``{energy: 0e, forces: 1x1o}``)."""

    inputs: Union[list[IrrepsSpec], dict[str, IrrepsSpec]]
    output: Union[IrrepsSpec, dict[str, IrrepsSpec]]
    group: Literal["o3", "escnn"] = "o3"  # escnn: inputs/output name model attributes holding escnn FieldTypes
    parity: bool = True  # test improper rotations too (O(3)); false for SO(3)-only models
    translation: bool = True  # translate 'cartesian_points' inputs and outputs

    def check(self, given: Iterable[str]) -> list[tuple[str, str]]:
        """o3 specs are Irreps strings or 'cartesian_points'; escnn specs name model attributes (FieldTypes)."""
        problems = []
        specs = [(f"inputs{_item(k)}", spec) for k, spec in _entries(self.inputs)]
        specs += (
            [(f"output{_item(k)}", spec) for k, spec in _entries(self.output)]
            if isinstance(self.output, dict)
            else [("output", self.output)]
        )
        for key, spec in specs:
            if spec is None:
                continue
            if not isinstance(spec, str):  # one tensor's spec with its axis, {rep: cartesian_points, axis: 1}
                if self.group == "escnn":
                    problems.append((key, "with group escnn, name the model attribute holding the FieldType"))
                continue
            if self.group == "o3" and spec.isidentifier() and spec != "cartesian_points":
                problems.append(
                    (
                        key,
                        f"{spec!r} is not an Irreps string such as '1x1o'; names of model attributes "
                        "holding escnn FieldTypes need 'group: escnn'",
                    )
                )
            if self.group == "escnn" and (not spec.isidentifier() or spec == "cartesian_points"):
                problems.append(
                    (
                        key,
                        f"{spec!r}: with group escnn, give the name of the model attribute that holds "
                        "the escnn FieldType of this tensor (e.g. in_type), or null",
                    )
                )
        if self.group == "escnn":
            problems += [
                (k, "with group escnn, give a list of model attribute names (one per positional input), not a mapping")
                for k in ("inputs", "output")
                if isinstance(getattr(self, k), dict)
            ]
            problems += [
                (k, "does not apply to group escnn (every element of the escnn group is tested)")
                for k in ("parity", "translation")
                if k in given and getattr(self, k) is not True
            ]
        return problems


def _entries(specs: Any) -> list[tuple[int | str, Any]]:
    """``(index or key, spec)`` of a list or mapping of specs."""
    return list(specs.items()) if isinstance(specs, dict) else list(enumerate(specs))


def _item(key: int | str) -> str:
    return f"[{key}]" if isinstance(key, int) else f".{key}"


def _default_loss() -> ComponentSpec:
    return ComponentSpec("torch.nn.MSELoss", {}, section="loss")


@dataclass(kw_only=True)
class Recipe:
    """A validated recipe. Build one with :func:`load_recipe` or :func:`recipe_from_dict`.

    Example::

        recipe = load_recipe("recipe.yaml", ["trainer.epochs=5"])
        model = instantiate(recipe.model)
        opt = instantiate(recipe.optimizer, model.parameters())
    """

    name: Annotated[str, Check(_nonempty)]
    seed: Annotated[Optional[int], Range(ge=0, cap=2**32 - 1)] = None  # numpy's limit too
    model: ComponentSpec
    data: ComponentSpec
    loss: ComponentSpec = field(default_factory=_default_loss)
    optimizer: ComponentSpec
    scheduler: Optional[ComponentSpec] = None
    trainer: TrainerConfig
    collate: Optional[ComponentSpec] = None  # makes a batch of a list of items; None: torch's default_collate
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    symmetry: Optional[SymmetryConfig] = None
    source: Optional[str] = field(default=None, compare=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able dict with every default filled in; components in ``_component_`` form.

        Example::

            d = recipe.to_dict(); d["trainer"]["epochs"]  # -> 50
        """
        return to_plain(self)


def to_plain(value: Any) -> Any:
    if isinstance(value, ComponentSpec):
        out: dict[str, Any] = {"_component_": value.target}
        if value.weights is not None:
            out["_weights_"] = value.weights
        if value.namespaces:
            out["_namespace_"] = list(value.namespaces)
        out.update(copy.deepcopy(value.kwargs))
        return out
    if is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value) if not f.metadata.get("internal")}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value
