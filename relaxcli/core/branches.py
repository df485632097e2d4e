"""The unconstrained branch ``θ · W x`` that sits beside each relaxed equivariant op.

A branch owns one dense matrix ``weight`` of shape ``[dim_out, dim_in]`` over the op's whole feature, and the scale
``theta`` (a buffer set by the schedule; a learnable parameter, ACE's γ, under the ACE schedules). It acts per row
(node, point, pixel), so permutation and translation equivariance survive. Two layouts are built in:

- :class:`DenseBranch` -- the feature is the last axis (e3nn ``Irreps`` features ``[..., dim]``).
- :class:`VectorBranch` -- Vector-Neuron features with a channel axis and a 3-vector axis (``[B, C, 3, ...]``);
  the matrix is applied on the native layout with one ``einsum``, flattened index ``c * 3 + i``.

Example:
    >>> b = DenseBranch(4, 6, init_std=0.0)
    >>> _ = b.theta.fill_(0.5); b(torch.randn(10, 4)).shape
    torch.Size([10, 6])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .reps import Rep

__all__ = ["LayoutError", "Branch", "DenseBranch", "VectorBranch", "Parts", "vector_axes", "describe_layout"]

#: The pieces a feature was concatenated from: ``(source, index)`` each, ``index`` None for a piece taken whole
#: (``cat([h[dst], h[src], e], -1)`` -> ``((h, dst), (h, src), (e, None))``; see :meth:`DenseBranch.gathered`).
Parts = Sequence[tuple[torch.Tensor, "torch.Tensor | None"]]


class LayoutError(ValueError):
    """A feature whose shape does not fit a branch's layout. The message says the layout assumed and the shape got;
    the site that ran the branch adds its path and op (:class:`relaxcli.core.graph.Site`)."""


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
        # θ scales the (small) weight, not the (large) output: one pass less over the feature, forward and backward
        return self.product(x, self.theta * self.weight)

    def product(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``W x`` on the native layout; ``weight`` (same shape as ``W``) replaces ``W``, e.g. the op's own matrix
        plus ``θ W`` when an adapter fuses the op and its branch into one product."""
        raise NotImplementedError

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        """The input as ``[R, dim_in]`` rows; a uniform random subset of at most ``max_rows`` of them."""
        raise NotImplementedError

    def check_feature(self, x: torch.Tensor) -> None:
        """Raise :class:`LayoutError` (the layout assumed, the shape got) unless ``x`` fits the branch's layout."""

    @property
    def layout(self) -> str:
        """The feature layout found at the calls so far, for tables (``"[B, *, 3, C]"``); empty where trivial."""
        return ""

    def extra_repr(self) -> str:
        return f"{self.dim_in} -> {self.dim_out}"


def _rebuilds(x: torch.Tensor, parts: Parts, dim: int, dim_in: int) -> bool:
    """Whether ``cat([source[index] or source, ...], dim)`` is ``x``'s layout on its last axis, with a gathered
    piece whose source has fewer rows than ``x`` (else computing on the sources saves nothing)."""
    if x.dim() < 2 or dim % x.dim() != x.dim() - 1 or sum(int(s.shape[-1]) for s, _ in parts) != dim_in:
        return False
    saves = False
    for source, index in parts:
        if not isinstance(source, torch.Tensor) or not isinstance(index, (torch.Tensor, type(None))):
            return False  # a tuple indexed by an int, say: not a gather of rows
        if index is None:
            if source.shape[:-1] != x.shape[:-1]:
                return False
            continue
        if index.dim() != 1 or index.dtype not in (torch.long, torch.int) or source.dim() != x.dim():
            return False
        if index.shape[0] != x.shape[0] or source.shape[1:-1] != x.shape[1:-1]:
            return False
        saves = saves or source.shape[0] < x.shape[0]
    return saves


def _pick(n: int, max_rows: int | None, device: torch.device) -> torch.Tensor | None:
    if max_rows is None or n <= max_rows:
        return None
    return torch.randint(n, (max_rows,), device=device)


class DenseBranch(Branch):
    """``W x`` on the last axis: ``F.linear(x, W)``."""

    def product(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.linear(x, self.weight if weight is None else weight)

    def gathered(self, x: torch.Tensor, parts: Parts, dim: int = -1) -> torch.Tensor:
        """``self(x)`` for a feature ``x = cat([source[index] or source, ...], dim)``, computed on the sources.

        A message-passing layer feeds its op ``cat([h[dst], h[src], e], -1)``: one row per edge. Split by the
        pieces' columns, ``W = [W₁ | W₂ | W₃]``, and ``W x = (W₁ h)[dst] + (W₂ h)[src] + W₃ e``: the products run
        on the node rows (one product for both pieces of ``h``) and only their results are gathered onto the
        edges. ``parts`` are ``(source, index)`` per piece in order, ``index`` None for a piece taken whole. The
        map is the same; where the pieces do not rebuild ``x`` (``dim`` not its last axis, other shapes) or the
        sources are not smaller than ``x``, this is ``self(x)``.

        Example:
            >>> b = DenseBranch(8, 5, init_std=1.0); _ = b.theta.fill_(1.0)
            >>> h, e, dst, src = torch.randn(4, 3), torch.randn(12, 2), torch.randint(4, (12,)), torch.randint(4, (12,))
            >>> x = torch.cat([h[dst], h[src], e], -1)
            >>> torch.allclose(b.gathered(x, [(h, dst), (h, src), (e, None)]), b(x), atol=1e-6)
            True
        """
        if not _rebuilds(x, parts, dim, self.dim_in):
            return self(x)
        weight = self.theta * self.weight
        blocks: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []  # (source, index, its columns)
        start = 0
        for source, index in parts:
            width = int(source.shape[-1])
            blocks.append((source, index, weight[:, start : start + width]))
            start += width
        groups: dict[int, list[int]] = {}  # the gathered pieces of one source share a product
        for k, (source, index, _) in enumerate(blocks):
            groups.setdefault(id(source) if index is not None else -1 - k, []).append(k)
        out: torch.Tensor | None = None
        for ks in groups.values():
            columns = blocks[ks[0]][2] if len(ks) == 1 else torch.cat([blocks[k][2] for k in ks])
            product = nn.functional.linear(blocks[ks[0]][0], columns)
            for j, k in enumerate(ks):
                index = blocks[k][1]
                y = product if len(ks) == 1 else product[..., j * self.dim_out : (j + 1) * self.dim_out]
                y = y if index is None else y[index]
                out = y if out is None else out + y
        assert out is not None
        return out

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        r = x.reshape(-1, self.dim_in)
        idx = _pick(r.shape[0], max_rows, r.device)
        return r if idx is None else r[idx]

    def check_feature(self, x: torch.Tensor) -> None:
        if x.dim() == 0 or x.shape[-1] != self.dim_in:
            raise LayoutError(
                f"assumed layout [..., {self.dim_in}] (the feature on the last axis), got shape {tuple(x.shape)}"
            )


class VectorBranch(Branch):
    """``W x`` for Vector-Neuron features: channels on ``channel_axis``, 3-vectors on ``vector_axis``.

    ``W`` is ``[3 C_out, 3 C_in]`` with flattened index ``c * 3 + i``; it is applied as ``W[o,i,c,j] x[..c..j..]``
    without moving axes. With ``vector_axis=None`` the 3-vector axis is found at each call from the feature's shape
    (:meth:`axes`): the one axis of size 3 other than the channel axis and the batch axis 0. The weight's shape does
    not depend on the layout, so neither does the state_dict.

    Example:
        >>> b = VectorBranch(8, 4, channel_axis=-1, vector_axis=None)   # nn.Linear on x.transpose(1, -1)
        >>> b.product(torch.randn(2, 100, 3, 8)).shape, b.layout
        (torch.Size([2, 100, 3, 4]), '[B, *, 3, C]')
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        init_std: float = 1e-4,
        channel_axis: int = 1,
        vector_axis: int | None = 2,
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
        self._equations: dict[tuple[int, int, int], str] = {}
        self._found: dict[int, tuple[int, int]] = {}  # ndim -> (channel axis, vector axis) of the latest call

    def assumed(self) -> str:
        """The layout this branch assumes, in words (for errors)."""
        return describe_layout(self.channels_in, self.channel_axis, self.vector_axis)

    def axes(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
        """``(channel axis, vector axis)``, non-negative, for a feature of ``shape`` (see :func:`vector_axes`); where
        several axes could hold the 3-vector, the one found at an earlier call of the same rank is kept."""
        ca, va = vector_axes(shape, self.channels_in, self.channel_axis, self.vector_axis, self._found.get(len(shape)))
        self._found[len(shape)] = (ca, va)
        return ca, va

    def check_feature(self, x: torch.Tensor) -> None:
        self.axes(x.shape)

    @property
    def layout(self) -> str:
        if not self._found:
            if self.vector_axis is None:
                return f"C on axis {self.channel_axis}, 3 found per call"
            return f"C on axis {self.channel_axis}, 3 on axis {self.vector_axis}"
        return " or ".join(_pattern(n, ca, va) for n, (ca, va) in sorted(self._found.items()))

    def _equation(self, ndim: int, ca: int, va: int) -> str:
        eq = self._equations.get((ndim, ca, va))
        if eq is None:
            letters = [chr(ord("a") + k) for k in range(ndim)]  # a, b, c, ... never 'y'/'z'
            out = list(letters)
            out[ca], out[va] = "y", "z"
            eq = f"y z {letters[ca]} {letters[va]}, {''.join(letters)} -> {''.join(out)}".replace(" ", "")
            self._equations[(ndim, ca, va)] = eq
        return eq

    def product(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        ca, va = self.axes(x.shape)
        if (ca, va) == (1, 2) and x.is_contiguous():
            # [B, C, 3, ...] flattens to [B, 3C, points] with index c*3+i: one batched matmul, contiguous output
            b = x.shape[0]
            y = torch.bmm(weight.expand(b, -1, -1), x.reshape(b, self.dim_in, -1))
            return y.view(b, self.channels_out, 3, *x.shape[3:])
        w = weight.view(self.channels_out, 3, self.channels_in, 3)
        return torch.einsum(self._equation(x.dim(), ca, va), w, x)

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        ca, va = self.axes(x.shape)
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


def describe_layout(channels: int, channel_axis: int, vector_axis: int | None) -> str:
    """A VN layout in words: ``"channels (C=8) on axis 1, the 3-vector on axis 2"``."""
    vector = (
        f"the 3-vector on axis {vector_axis}"
        if vector_axis is not None
        else "the 3-vector on the one other axis of size 3 (not the batch axis 0)"
    )
    return f"channels (C={channels}) on axis {channel_axis}, {vector}"


def vector_axes(
    shape: torch.Size | tuple[int, ...],
    channels: int,
    channel_axis: int,
    vector_axis: int | None,
    known: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """``(channel axis, vector axis)``, non-negative, of a VN feature of ``shape`` with ``channels`` on
    ``channel_axis``; a ``vector_axis`` of None is found: the one axis of size 3 other than the channel axis and the
    batch axis 0 (of a feature of at least 3 axes), or where several are, ``known[1]`` if it is one of them.

    Raises:
        LayoutError: the shape does not fit (the channel axis does not hold ``channels``, the vector axis is not of
            size 3), or no axis, or several, could hold the 3-vector (then the layout must be given).
    """
    ndim = len(shape)

    def fail(why: str) -> LayoutError:
        return LayoutError(
            f"assumed layout {describe_layout(channels, channel_axis, vector_axis)}, got shape {tuple(shape)}: {why}"
        )

    if not -ndim <= channel_axis < ndim or ndim < 2:
        raise fail(f"a {ndim}-D feature has no axis {channel_axis} beside a 3-vector axis")
    ca = channel_axis % ndim
    if shape[ca] != channels:
        raise fail(f"axis {channel_axis} has size {shape[ca]}, not the {channels} channels")
    if vector_axis is not None:
        if not -ndim <= vector_axis < ndim:
            raise fail(f"a {ndim}-D feature has no axis {vector_axis}")
        va = vector_axis % ndim
        if va == ca or shape[va] != 3:
            raise fail(f"axis {vector_axis} has size {shape[va]}, not 3")
        return ca, va
    first = 1 if ndim >= 3 else 0  # axis 0 is the batch
    candidates = [a for a in range(first, ndim) if a != ca and shape[a] == 3]
    if len(candidates) == 1:
        return ca, candidates[0]
    if known is not None and known[1] in candidates:
        return ca, known[1]  # several axes of size 3 now: keep the one found before (at the dry run)
    if not candidates:
        raise fail("no axis besides the channel axis has size 3")
    raise fail(
        f"axes {candidates} all have size 3, so the 3-vector axis is ambiguous; give the layout "
        "(vector_axis, or layouts per path)"
    )


def _pattern(ndim: int, ca: int, va: int) -> str:
    """A layout as a shape pattern: ``[B, *, 3, C]`` for channels on axis 3 and the 3-vector on axis 2."""
    names = ["B" if a == 0 else "*" for a in range(ndim)]
    names[ca], names[va] = "C", "3"
    return f"[{', '.join(names)}]"
