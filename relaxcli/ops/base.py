"""The op-adapter contract: how ``relax`` recognises an equivariant linear op, what its representations are, and
how the branch is attached to it.

An adapter answers four questions about a module:

- ``matches(module)``: is this an op I know?
- ``make_branch(module, init_std)``: the unconstrained branch (with the input and output representations);
  ``site_branch(path, module, init_std)`` where it depends on the call site (a VN op's layout per path);
- ``feature(args, kwargs)``: which call argument is the feature the branch acts on;
- ``add(output, branch_output)``: how the branch output joins the op's output.

and, optionally:

- ``can_fuse(module)`` / ``fused(module, branch, args, kwargs)``: where the op's own matrix is cheap to form in the
  branch's layout (a VN linear, an escnn convolution's expanded filter), ``op(x) + θ·W x`` is computed as one
  product with the matrix ``op + θ W``: the same map, at about the cost of the branch alone;
- ``record(module)``: the group action on the op as plain data (``{"action": ..., ...}``), which a ``.pt2`` file
  stores so the op can be relaxed again without its source (see :mod:`relaxcli.ops.registry`, ``ACTIONS``).

Example:
    >>> class MyLinear(torch.nn.Module): ...            # maps "4x0e+2x1o" -> "4x0e+2x1o"
    >>> register_op(ExplicitAdapter(MyLinear, rep_in=Rep.from_irreps("4x0e+2x1o"),
    ...                             rep_out=Rep.from_irreps("4x0e+2x1o")))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.branches import Branch, DenseBranch
from ..core.reps import Rep

__all__ = ["OpAdapter", "ClassAdapter", "ExplicitAdapter", "read_attribute"]


class OpAdapter:
    """Base class of op adapters. Subclasses set ``name`` and implement ``matches`` and ``make_branch``.

    Adapters that a recipe can name under ``relax.ops`` (and a ``.pt2`` file can record) set ``action`` (the name
    in the recipe) and ``recipe_keys`` (the recipe keys their constructor takes after the layer class).
    """

    name: str = "op"
    action: ClassVar[str | None] = None
    recipe_keys: ClassVar[tuple[str, ...]] = ()

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        raise NotImplementedError

    def site_branch(self, path: str, module: nn.Module, init_std: float) -> Branch:
        """The branch for the op at ``path`` (its qualified name in the model); by default :meth:`make_branch`.
        Adapters whose options differ per call site (a VN op's feature layout) override it."""
        return self.make_branch(module, init_std)

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """The input the branch acts on; by default the first positional argument."""
        if args:
            return args[0]
        if len(kwargs) == 1:
            return next(iter(kwargs.values()))
        raise TypeError(f"{self.name}: cannot tell which argument is the feature (kwargs {sorted(kwargs)})")

    def add(self, output: Any, branch_output: torch.Tensor) -> Any:
        """Join the branch output to the op's output; override for wrapped outputs."""
        return output + branch_output

    def can_fuse(self, module: nn.Module) -> bool:
        """Whether :meth:`fused` can compute this op together with its branch (default: no)."""
        return False

    def fused(self, module: nn.Module, branch: Branch, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``module(*args, **kwargs)`` plus ``branch(x)``, as one product with the op's matrix plus ``θ W``."""
        raise NotImplementedError(f"{self.name} does not fuse its op and branch")

    def record(self, module: nn.Module) -> dict[str, Any]:
        """The group action on ``module`` as plain data: ``{"action": self.action, <recipe key>: value, ...}``,
        with every value concrete (no attribute names), so that ``ACTIONS[action](cls, **rest)`` rebuilds it."""
        raise TypeError(
            f"{self.name} has a representation given as matrices, which a file cannot record; exclude "
            "the op or describe it with an action (relaxcli.IrrepsAdapter, relaxcli.VectorNeuronAdapter)"
        )

    def fits_feature(self, module: nn.Module, x: torch.Tensor) -> bool:
        """Whether ``x`` has the shape of this op's feature (to find it among inputs given in another order)."""
        return False


class ClassAdapter(OpAdapter):
    """Matches instances of a class given as the class itself or by an import path.

    A path is resolved to the class object, so any public alias names it: ``torch.nn.Linear`` and
    ``torch.nn.modules.linear.Linear`` match the same modules, as do ``e3nn.o3.Linear`` and
    ``e3nn.o3._linear.Linear``. Instances of subclasses match too unless ``subclasses=False``.
    :func:`~relaxcli.register_op` and a recipe's ``relax.ops`` import the path (:meth:`resolve`); an adapter that
    is never resolved (the built-in escnn ones) looks the path up among the modules already imported, so matching
    imports nothing.

    Example:
        >>> ClassAdapter("torch.nn.Linear").matches(torch.nn.Linear(2, 3))
        True
        >>> ClassAdapter("torch.nn.Linear", subclasses=False).matches(torch.nn.LazyLinear(3))
        False
    """

    def __init__(self, target: type[nn.Module] | str, feature_arg: int | str = 0, subclasses: bool = True) -> None:
        self.target = target
        self.feature_arg = feature_arg
        self.subclasses = subclasses
        self.name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
        self._cls: type | None = None if isinstance(target, str) else target

    def target_class(self) -> type | None:
        """The class the target names, or None while its module is not imported (nothing is imported here)."""
        if self._cls is None and isinstance(self.target, str):
            found = _lookup(self.target)
            if isinstance(found, type):
                self._cls = found
        return self._cls

    def resolve(self) -> ClassAdapter:
        """Import the target's path and keep the class object (``register_op`` and ``relax.ops`` do this).

        Raises:
            ValueError: the path does not import, or names something that is not a ``torch.nn.Module`` class.
        """
        if isinstance(self.target, str) and self._cls is None:
            from ..recipe.components import import_target

            obj, reason = import_target(self.target)
            if reason is not None:
                raise ValueError(f"{self.name}: cannot import the layer class {self.target!r}: {reason}")
            if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
                raise ValueError(f"{self.name}: {self.target!r} is a {type(obj).__name__}, not a torch.nn.Module class")
            self._cls = obj
        return self

    def matches(self, module: nn.Module) -> bool:
        cls = self.target_class()
        if cls is not None:
            return isinstance(module, cls) if self.subclasses else type(module) is cls
        assert isinstance(self.target, str)
        candidates = type(module).__mro__ if self.subclasses else (type(module),)
        return any(_names_class(self.target, c) for c in candidates)

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        if isinstance(self.feature_arg, str):
            return kwargs[self.feature_arg]
        if self.feature_arg == 0:
            return super().feature(args, kwargs)
        return args[self.feature_arg]


def _lookup(path: str) -> Any:
    """The object ``path`` names among the modules already imported (the longest imported prefix, then
    attributes), or None; imports nothing."""
    import sys

    parts = path.split(".")
    for n in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get(".".join(parts[:n]))
        if obj is None:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _names_class(path: str, cls: type) -> bool:
    """Whether ``path`` is the defining path of ``cls`` (``e3nn.o3._linear.Linear``)."""
    return path == f"{cls.__module__}.{cls.__qualname__}"


def read_attribute(module: nn.Module, spec: str | int | Callable[[nn.Module], Any], what: str) -> Any:
    """A value a layer holds, as an adapter's option gives it: the value itself (an int), a callable
    ``module -> value``, or an attribute name, dotted for a submodule's (``"map_to_feat.in_features"``).

    Raises:
        AttributeError: the (dotted) attribute is missing; the message names the part that is missing.
    """
    if callable(spec):
        return spec(module)
    if not isinstance(spec, str):
        return spec
    obj: Any = module
    for i, attr in enumerate(spec.split(".")):
        if not hasattr(obj, attr):
            owner = type(obj).__name__ if i == 0 else ".".join(spec.split(".")[:i])
            raise AttributeError(f"{what} {spec!r}: {owner} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    return obj


class ExplicitAdapter(ClassAdapter):
    """A user's op whose representations are given explicitly; the feature is the last axis.

    Args:
        target: the op class or its import path.
        rep_in, rep_out: a :class:`~relaxcli.Rep`, or a function ``module -> Rep``.
        feature_arg: position (int) or keyword (str) of the feature argument.
    """

    def __init__(
        self,
        target: type[nn.Module] | str,
        rep_in: Rep | Callable[[nn.Module], Rep],
        rep_out: Rep | Callable[[nn.Module], Rep],
        feature_arg: int | str = 0,
    ) -> None:
        super().__init__(target, feature_arg)
        self.rep_in, self.rep_out = rep_in, rep_out

    def make_branch(self, module: nn.Module, init_std: float) -> Branch:
        rep_in = self.rep_in(module) if callable(self.rep_in) else self.rep_in
        rep_out = self.rep_out(module) if callable(self.rep_out) else self.rep_out
        return DenseBranch(rep_in.dim, rep_out.dim, init_std, rep_in, rep_out)
