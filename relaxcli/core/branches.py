"""The unconstrained branch ``θ · W x`` that sits beside each relaxed equivariant op.

A branch owns one dense matrix ``weight`` of shape ``[dim_out, dim_in]`` over the op's whole feature, and the scale
``theta`` (a buffer set by the schedule; a learnable parameter, ACE's γ, under the ACE schedules). It acts per row
(node, point, pixel), so permutation and translation equivariance survive. Two layouts are built in:

- :class:`DenseBranch` -- the feature is the last axis (e3nn ``Irreps`` features ``[..., dim]``).
- :class:`VectorBranch` -- Vector-Neuron features with a channel axis and a 3-vector axis (``[B, C, 3, ...]``);
  the matrix is applied on the native layout with one ``einsum``, flattened index ``c * 3 + i``.

Example:
    >>> b = DenseBranch(4, 6, init_std=0.0)
    >>> b.theta.fill_(0.5); b(torch.randn(10, 4)).shape
    torch.Size([10, 6])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .reps import Rep

__all__ = ["Branch", "DenseBranch", "VectorBranch"]


class Branch(nn.Module):
    """Base class: ``forward(x) = theta * product(x)``, plus what the regulariser needs.

    Subclasses implement :meth:`product` (``W x`` on the native layout) and :meth:`rows` (the input as
    ``[R, dim_in]``). The representation matrices of the site are kept as non-persistent buffers so they follow
    ``.to(device)``.
    """

    theta: torch.Tensor  # a buffer, or a parameter once learnt (ACE's γ)
    generators_in: torch.Tensor
    generators_out: torch.Tensor
    elements_in: torch.Tensor
    elements_out: torch.Tensor

    def __init__(
        self, dim_in: int, dim_out: int, init_std: float = 1e-4, rep_in: Rep | None = None, rep_out: Rep | None = None
    ) -> None:
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out
        self.weight = nn.Parameter(torch.randn(dim_out, dim_in) * init_std)
        self.register_buffer("theta", torch.zeros(()))
        self.active = True  # False: the site returns the op's output untouched (the projected model)
        self.captured: list[torch.Tensor] = []  # detached inputs of this step, for the data regularisers
        self.force_capture = False  # capture also in eval mode / without grad (RelaxedModel.capturing)
        for side, rep, dim in (("in", rep_in, dim_in), ("out", rep_out, dim_out)):
            if rep is not None and rep.dim != dim:
                raise ValueError(f"rep_{side} has dim {rep.dim}, branch expects {dim}")
        self.rep_names = (
            rep_in.name if rep_in is not None else f"{dim_in}-dim",
            rep_out.name if rep_out is not None else f"{dim_out}-dim",
        )
        self._set_rep("in", rep_in, dim_in)
        self._set_rep("out", rep_out, dim_out)
        if (rep_in is not None and rep_out is not None) and (
            rep_in.num_generators != rep_out.num_generators or rep_in.num_elements != rep_out.num_elements
        ):
            raise ValueError(f"input and output representations disagree on the group: {rep_in} vs {rep_out}")

    def _set_rep(self, side: str, rep: Rep | None, dim: int) -> None:
        gens = rep.generators if rep is not None else torch.zeros(0, dim, dim)
        elems = rep.elements if rep is not None else torch.zeros(0, dim, dim)
        dtype = torch.get_default_dtype()
        self.register_buffer(f"generators_{side}", gens.to(dtype), persistent=False)
        self.register_buffer(f"elements_{side}", elems.to(dtype), persistent=False)

    def learn_theta(self, value: float) -> nn.Parameter:
        """Make θ a learnable parameter (ACE's γ) starting at ``value``; the state_dict key stays ``theta``."""
        if not isinstance(self.theta, nn.Parameter):
            theta = self._buffers.pop("theta")
            assert theta is not None
            self.theta = nn.Parameter(torch.full_like(theta, value))
        assert isinstance(self.theta, nn.Parameter)
        return self.theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta * self.product(x)

    def product(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``W x`` on the native layout; ``weight`` (same shape as ``W``) replaces ``W``, e.g. the op's own matrix
        plus ``θ W`` when an adapter fuses the op and its branch into one product."""
        raise NotImplementedError

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        """The input as ``[R, dim_in]`` rows; a uniform random subset of at most ``max_rows`` of them."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.dim_in} -> {self.dim_out}"


def _pick(n: int, max_rows: int | None, device: torch.device) -> torch.Tensor | None:
    if max_rows is None or n <= max_rows:
        return None
    return torch.randint(n, (max_rows,), device=device)


class DenseBranch(Branch):
    """``W x`` on the last axis: ``F.linear(x, W)``."""

    def product(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.linear(x, self.weight if weight is None else weight)

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        r = x.reshape(-1, self.dim_in)
        idx = _pick(r.shape[0], max_rows, r.device)
        return r if idx is None else r[idx]


class VectorBranch(Branch):
    """``W x`` for Vector-Neuron features: channels on ``channel_axis``, 3-vectors on ``vector_axis``.

    ``W`` is ``[3 C_out, 3 C_in]`` with flattened index ``c * 3 + i``; it is applied as ``W[o,i,c,j] x[..c..j..]``
    without moving axes.
    """

    def __init__(
        self, channels_in: int, channels_out: int, init_std: float = 1e-4, channel_axis: int = 1, vector_axis: int = 2
    ) -> None:
        super().__init__(
            3 * channels_in,
            3 * channels_out,
            init_std,
            Rep.vector_neurons(channels_in),
            Rep.vector_neurons(channels_out),
        )
        self.channels_in, self.channels_out = channels_in, channels_out
        self.channel_axis, self.vector_axis = channel_axis, vector_axis
        self._equations: dict[int, str] = {}

    def _axes(self, ndim: int) -> tuple[int, int]:
        return self.channel_axis % ndim, self.vector_axis % ndim

    def _equation(self, ndim: int) -> str:
        eq = self._equations.get(ndim)
        if eq is None:
            ca, va = self._axes(ndim)
            letters = [chr(ord("a") + k) for k in range(ndim)]  # a, b, c, ... never 'y'/'z'
            out = list(letters)
            out[ca], out[va] = "y", "z"
            eq = f"y z {letters[ca]} {letters[va]}, {''.join(letters)} -> {''.join(out)}".replace(" ", "")
            self._equations[ndim] = eq
        return eq

    def product(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        if self._axes(x.dim()) == (1, 2) and x.is_contiguous():
            # [B, C, 3, ...] flattens to [B, 3C, points] with index c*3+i: one batched matmul, contiguous output
            b = x.shape[0]
            y = torch.bmm(weight.expand(b, -1, -1), x.reshape(b, self.dim_in, -1))
            return y.view(b, self.channels_out, 3, *x.shape[3:])
        w = weight.view(self.channels_out, 3, self.channels_in, 3)
        return torch.einsum(self._equation(x.dim()), w, x)

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        ca, va = self._axes(x.dim())
        xm = x.movedim((ca, va), (-2, -1))  # a view: [..., C, 3]
        lead = xm.shape[:-2]
        n = math.prod(lead)
        idx = _pick(n, max_rows, x.device)
        if idx is None:
            return xm.reshape(n, self.dim_in)
        return xm[torch.unravel_index(idx, lead)].reshape(-1, self.dim_in)

    def extra_repr(self) -> str:
        return (
            f"{self.channels_in}x3 -> {self.channels_out}x3, channel_axis={self.channel_axis}, "
            f"vector_axis={self.vector_axis}"
        )
