"""Group representations on flat feature vectors: Lie-algebra generators plus discrete group elements.

A :class:`Rep` says how a group acts on one feature vector of dimension ``dim`` (one node, one point, one pixel):
``generators[k]`` is ``dρ(A_k)`` for the continuous part (the Lie algebra), ``elements[g]`` is ``ρ(g)`` for the
discrete generators that the algebra cannot reach (parity for O(3), a rotation by 2π/n for C_n).

Example:
    >>> rep = Rep.from_irreps("2x0e + 1x1o")
    >>> rep.dim, rep.generators.shape, rep.elements.shape
    (5, torch.Size([3, 5, 5]), torch.Size([1, 5, 5]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from e3nn import o3

__all__ = ["Rep", "so3_generators_xyz", "default_dtype"]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Within the block the default dtype is ``dtype``. e3nn computes Wigner matrices and generators, and bakes its
    constants at construction, in the default dtype: build and transform under float64 where precision matters."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def so3_generators_xyz() -> torch.Tensor:
    """The generators ``L_x, L_y, L_z`` of rotations of Cartesian xyz vectors, shape ``[3, 3, 3]`` (float64)."""
    with default_dtype(torch.float64):
        return o3.so3_generators(1)


@dataclass(frozen=True)
class Rep:
    """A representation on ``dim``-dimensional feature vectors.

    Attributes:
        dim: the feature dimension the group acts on.
        generators: ``[K, dim, dim]`` Lie-algebra generators ``dρ(A_k)`` (``K = 0`` for a discrete group).
        elements: ``[G, dim, dim]`` discrete group elements ``ρ(g)`` (parity, C_n rotations); ``G`` may be 0.
        name: a short human description used in tables, e.g. the Irreps string.
    """

    dim: int
    generators: torch.Tensor
    elements: torch.Tensor
    name: str = field(default="")

    def __post_init__(self) -> None:
        for what, t in (("generators", self.generators), ("elements", self.elements)):
            if t.dim() != 3 or t.shape[1:] != (self.dim, self.dim):
                raise ValueError(f"Rep {what} must have shape [n, {self.dim}, {self.dim}], got {tuple(t.shape)}")

    # -- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def from_irreps(cls, irreps: str | o3.Irreps, parity: bool | None = None) -> Rep:
        """The O(3) representation on an e3nn ``Irreps`` feature.

        Generators are block-diagonal: each ``(mul, ir)`` contributes ``mul`` copies of ``o3.so3_generators(ir.l)``.
        The parity element ``irreps.D_from_matrix(-I)`` is included when some irrep is odd (``parity=None``) or when
        ``parity=True``; a purely even feature has trivial parity and no element is added.
        """
        irreps = o3.Irreps(irreps)
        blocks: list[torch.Tensor] = []
        with default_dtype(torch.float64):
            for mul, ir in irreps:
                blocks += [o3.so3_generators(ir.l)] * mul
        dim = irreps.dim
        gens = torch.zeros(3, dim, dim, dtype=torch.float64)
        i = 0
        for g in blocks:
            d = g.shape[-1]
            gens[:, i : i + d, i : i + d] = g
            i += d
        has_odd = any(ir.p == -1 for _, ir in irreps)
        with_parity = has_odd if parity is None else parity
        if with_parity:
            with default_dtype(torch.float64):
                elements = irreps.D_from_matrix(-torch.eye(3))[None]
        else:
            elements = torch.zeros(0, dim, dim, dtype=torch.float64)
        return cls(dim, gens, elements, name=str(irreps.simplify()))

    @classmethod
    def vector_neurons(cls, channels: int) -> Rep:
        """SO(3) acting on ``channels`` Cartesian 3-vectors flattened as ``c*3 + i``: ``kron(I_C, A)``."""
        eye = torch.eye(channels, dtype=torch.float64)
        gens = torch.stack([torch.kron(eye, a) for a in so3_generators_xyz()])
        return cls(
            3 * channels,
            gens,
            torch.zeros(0, 3 * channels, 3 * channels, dtype=torch.float64),
            name=f"{channels}x3 (VN)",
        )

    @classmethod
    def explicit(
        cls, generators: torch.Tensor | None = None, elements: torch.Tensor | None = None, name: str = "explicit"
    ) -> Rep:
        """A representation given by matrices: Lie-algebra ``generators`` and/or discrete ``elements``."""
        if generators is None and elements is None:
            raise ValueError("Rep.explicit needs generators, elements or both")
        ref = generators if generators is not None else elements
        assert ref is not None
        dim = ref.shape[-1]
        empty = torch.zeros(0, dim, dim, dtype=torch.float64)
        gens = empty if generators is None else torch.as_tensor(generators, dtype=torch.float64)
        elems = empty if elements is None else torch.as_tensor(elements, dtype=torch.float64)
        return cls(dim, gens, elems, name=name)

    # -- helpers ------------------------------------------------------------------------------------------------
    @property
    def num_generators(self) -> int:
        return self.generators.shape[0]

    @property
    def num_elements(self) -> int:
        return self.elements.shape[0]

    def __repr__(self) -> str:
        return f"Rep({self.name or self.dim}, generators={self.num_generators}, elements={self.num_elements})"
