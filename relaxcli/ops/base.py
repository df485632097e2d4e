"""The op-adapter contract: how ``relax`` recognises an equivariant linear op, what its representations are, and
how the branch is attached to it.

An adapter answers four questions about a module:

- ``matches(module)``: is this an op I know?
- ``make_branch(module, init_std)``: the unconstrained branch (with the input and output representations);
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

__all__ = ["OpAdapter", "ClassAdapter", "ExplicitAdapter"]


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

    A path matches the class's defining path (``e3nn.o3._linear.Linear``) and any path under which the class is
    re-exported (``e3nn.o3.Linear``), for the class itself and its subclasses; nothing is imported to decide.
    """

    def __init__(self, target: type[nn.Module] | str, feature_arg: int | str = 0) -> None:
        self.target = target
        self.feature_arg = feature_arg
        self.name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"

    def matches(self, module: nn.Module) -> bool:
        if isinstance(self.target, str):
            return any(_names_class(self.target, c) for c in type(module).__mro__)
        return isinstance(module, self.target)

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        if isinstance(self.feature_arg, str):
            return kwargs[self.feature_arg]
        if self.feature_arg == 0:
            return super().feature(args, kwargs)
        return args[self.feature_arg]


def _names_class(path: str, cls: type) -> bool:
    """Whether ``path`` names ``cls``: its defining path, or a re-export in a parent package that is already
    imported (``e3nn.o3.Linear`` for ``e3nn.o3._linear.Linear``)."""
    import sys

    if path == f"{cls.__module__}.{cls.__qualname__}":
        return True
    module_name, _, attr = path.rpartition(".")
    module = sys.modules.get(module_name)
    return module is not None and getattr(module, attr, None) is cls


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
