"""escnn steerable layers: relaxing ``R2Conv`` and ``Linear`` over finite planar groups (C_n, D_n).

escnn is optional (``pip install -e ".[escnn]" && pip install --no-deps escnn==1.0.11``; see the README). Nothing
here imports it until a model holds an escnn layer.

The branch beside an ``R2Conv`` is a plain convolution with the same geometry (kernel, stride, padding, dilation),
``weight [c_out, c_in·k·k]``: a linear map from an input *patch* to an output pixel. A group element ``g`` acts on a
patch by moving its pixels (the rotation or flip of the grid, a permutation of the ``k·k`` positions, taken from
escnn's own ``GeometricTensor.transform`` so its conventions hold) and on each pixel's fibre by ``ρ_in(g)``; on the
output pixel by ``ρ_out(g)``. So the branch is an equivariant convolution exactly when
``W (ρ_in(g) ⊗ S(g)) = ρ_out(g) W`` for the group's generators, which is the discrete term of the regulariser with
``rep_in = Rep.explicit(elements=[ρ_in(g) ⊗ S(g)])`` and ``rep_out = Rep.explicit(elements=[ρ_out(g)])``, the rows
being input patches. (Comparing ``rot90(W)`` with ``W`` ignores the fibres and is wrong for regular fields.)

The patch representation is held as dense ``(c_in·k·k)²`` matrices per generator (the regulariser converts them to
sparse for its products): 2.5 MB for 32 channels and 5x5 kernels, but 160 MB for 256 channels, so very wide layers
would need a sparse :class:`Rep` first.

Only group elements that map the pixel grid onto itself are exact on a grid: rotations by multiples of 90° and the
flips, i.e. C_1, C_2, C_4, D_1, D_2, D_4. Other groups (C_8, SO(2), ...) are refused with a clear error.

Example:
    >>> from escnn import gspaces, nn as enn
    >>> gs = gspaces.rot2dOnR2(4)
    >>> conv = enn.R2Conv(enn.FieldType(gs, [gs.regular_repr]), enn.FieldType(gs, 2 * [gs.regular_repr]), 3, padding=1)
    >>> relaxed = relaxcli.relax(enn.SequentialModule(conv))    # hooks mode: escnn cannot be traced by fx
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.branches import Branch, DenseBranch
from ..core.reps import Rep
from ..errors import RelaxError
from .base import ClassAdapter

__all__ = [
    "ConvBranch",
    "EscnnConvAdapter",
    "EscnnLinearAdapter",
    "field_rep",
    "grid_permutation",
    "group_generators",
    "import_escnn",
]

R2CONV = "escnn.nn.modules.conv.r2convolution.R2Conv"
LINEAR = "escnn.nn.modules.linear.Linear"


@functools.cache
def import_escnn() -> Any:
    """``import escnn`` (once: branches call this on every forward), without its warning that py3nj is missing
    (only SO(3) Clebsch-Gordan coefficients need it; relax installs escnn without py3nj on purpose), and with a
    clear error when escnn is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*py3nj.*")
            import escnn
            import escnn.nn
    except ImportError as e:
        raise RelaxError(
            f"this model needs escnn, which is not installed ({e}). Install it, in the clone, with: pip install "
            '-e ".[escnn]" && pip install --no-deps escnn==1.0.11 (or ./test.sh --escnn, which sets up .venv-escnn; '
            'README, "escnn")'
        ) from None
    return escnn


class ConvBranch(Branch):
    """``W * x``: a 2D convolution whose weight is held as ``[c_out, c_in·kh·kw]`` (a map from patches to pixels).

    ``rows(x)`` are input patches (``c_in·kh·kw`` each, at output positions drawn uniformly), so the regulariser sees
    the same linear map the convolution applies at every pixel.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        padding_mode: str = "zeros",
        init_std: float = 1e-4,
        rep_in: Rep | None = None,
        rep_out: Rep | None = None,
    ) -> None:
        kh, kw = kernel_size
        super().__init__(c_in * kh * kw, c_out, init_std, rep_in, rep_out)
        self.c_in, self.c_out, self.kernel_size = c_in, c_out, (kh, kw)
        self.stride, self.padding, self.dilation, self.padding_mode = stride, padding, dilation, padding_mode

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph == pw == 0:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, (pw, pw, ph, ph), mode=mode)

    def product(
        self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        w = (self.weight if weight is None else weight).view(self.c_out, self.c_in, *self.kernel_size)
        if self.padding_mode == "zeros":
            return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation)
        return F.conv2d(self._pad(x), w, bias, self.stride, 0, self.dilation)

    def rows(self, x: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
        xp = self._pad(x)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        b, _, hp, wp = xp.shape
        h_out, w_out = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        n = b * h_out * w_out
        if max_rows is None or n <= max_rows:
            cols = F.unfold(xp, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # [B, c_in·kh·kw, L]
            return cols.transpose(1, 2).reshape(-1, self.dim_in)
        idx = torch.randint(n, (max_rows,), device=x.device)
        bi, rest = idx // (h_out * w_out), idx % (h_out * w_out)
        ys = (rest // w_out * sh)[:, None] + torch.arange(kh, device=x.device) * dh  # [R, kh]
        xs = (rest % w_out * sw)[:, None] + torch.arange(kw, device=x.device) * dw  # [R, kw]
        patches = xp[bi[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # [R, kh, kw, c_in]
        return patches.permute(0, 3, 1, 2).reshape(max_rows, self.dim_in)

    def extra_repr(self) -> str:
        return (
            f"{self.c_in} -> {self.c_out}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}"
        )


def group_generators(gspace: Any) -> list[Any]:
    """The generators of a finite escnn fibre group (C_n: the rotation; D_n: the rotation and the flip)."""
    group = gspace.fibergroup
    if group.order() < 1:
        raise TypeError(
            f"relax supports escnn layers over finite groups (C_n, D_n); {group} is continuous "
            f"(its Lie algebra would be needed). Build the model with e.g. gspaces.rot2dOnR2(N=4)"
        )
    return list(group.generators)


def field_rep(field_type: Any, name: str = "") -> Rep:
    """``ρ(g)`` of an escnn ``FieldType`` for each generator ``g`` of its group, as a discrete-only :class:`Rep`."""
    elements = torch.stack(
        [
            torch.as_tensor(field_type.representation(g), dtype=torch.float64)
            for g in group_generators(field_type.gspace)
        ]
    )
    return Rep.explicit(elements=elements, name=name or _type_name(field_type))


def grid_permutation(gspace: Any, g: Any, size: tuple[int, int]) -> torch.Tensor:
    """The ``(h·w) x (h·w)`` permutation ``S`` with ``vec(g·image) = S vec(image)`` for a scalar image of ``size``,
    read off escnn's own ``GeometricTensor.transform``; an error if ``g`` does not map the grid onto itself."""
    enn = import_escnn().nn
    h, w = size
    index = torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)
    trivial = enn.FieldType(gspace, [gspace.trivial_repr])
    try:
        moved = enn.GeometricTensor(index, trivial).transform(g).tensor.reshape(-1)
    except Exception as e:  # escnn asserts square grids for rotations
        raise TypeError(f"group element {g} cannot act on a {h}x{w} kernel ({e}); use square kernels") from None
    source = moved.round()
    if not torch.allclose(moved, source, atol=1e-6) or sorted(source.long().tolist()) != list(range(h * w)):
        raise TypeError(
            f"group element {g} does not map the {h}x{w} pixel grid onto itself (escnn interpolates "
            "it), so no exact regulariser exists on a grid; relax supports rotations by multiples of "
            "90 degrees and flips: C_1, C_2, C_4, D_1, D_2, D_4"
        )
    perm = torch.zeros(h * w, h * w, dtype=torch.float64)
    perm[torch.arange(h * w), source.long()] = 1.0
    return perm


def _type_name(field_type: Any) -> str:
    counts: dict[str, int] = {}
    for r in field_type.representations:
        counts[r.name] = counts.get(r.name, 0) + 1
    return "+".join(f"{n}x{name}" for name, n in counts.items()) + f" ({field_type.gspace.fibergroup})"


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


class _GeometricTensorOp(ClassAdapter):
    """escnn layers take and return ``GeometricTensor``s: the branch reads ``.tensor`` and the result is rebuilt."""

    def feature(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        x: Any = super().feature(args, kwargs)
        return x.tensor if is_geometric_tensor(x) else x

    def add(self, output: Any, branch_output: torch.Tensor) -> Any:
        tensor_type = import_escnn().nn.GeometricTensor
        return tensor_type(output.tensor + branch_output, output.type, getattr(output, "coords", None))


class EscnnConvAdapter(_GeometricTensorOp):
    """escnn ``R2Conv`` over C_n / D_n (n in 1, 2, 4): a plain-convolution branch; group elements for the
    regulariser act on patches (grid permutation ⊗ ``ρ_in``) and on output pixels (``ρ_out``)."""

    def __init__(self) -> None:
        super().__init__(R2CONV)

    def make_branch(self, module: Any, init_std: float) -> Branch:  # an escnn R2Conv (untyped)
        in_type, out_type = module.in_type, module.out_type
        if int(getattr(module, "groups", 1)) != 1:
            raise TypeError(f"{self.name}: grouped escnn convolutions (groups={module.groups}) are not supported")
        k = _pair(module.kernel_size)
        patch = [
            torch.kron(
                torch.as_tensor(in_type.representation(g), dtype=torch.float64), grid_permutation(in_type.gspace, g, k)
            )
            for g in group_generators(in_type.gspace)
        ]
        rep_in = Rep.explicit(elements=torch.stack(patch), name=f"{_type_name(in_type)} patch {k[0]}x{k[1]}")
        rep_out = field_rep(out_type)
        return ConvBranch(
            in_type.size,
            out_type.size,
            k,
            _pair(module.stride),
            _pair(module.padding),
            _pair(module.dilation),
            str(getattr(module, "padding_mode", "zeros")),
            init_std,
            rep_in,
            rep_out,
        )

    def can_fuse(self, module: nn.Module) -> bool:
        return getattr(type(module).forward, "__qualname__", "") == "R2Conv.forward"  # escnn's own forward

    def fused(self, module: Any, branch: Branch, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # R2Conv.forward with the expanded filter plus θ W: one convolution instead of two
        x = args[0] if args else next(iter(kwargs.values()))
        if x.type != module.in_type:
            raise TypeError(f"{self.name}: input field type {x.type} is not the layer's in_type {module.in_type}")
        filt, bias = module.expand_parameters() if module.training else (module.filter, module.expanded_bias)
        assert isinstance(branch, ConvBranch)
        out = branch.product(x.tensor, filt.reshape(branch.weight.shape) + branch.theta * branch.weight, bias)
        return import_escnn().nn.GeometricTensor(out, module.out_type, coords=None)


class EscnnLinearAdapter(_GeometricTensorOp):
    """escnn ``Linear`` (features without a base space, ``[B, C]``) over a finite group: a dense branch with
    ``ρ_in(g)`` and ``ρ_out(g)`` of the generators."""

    def __init__(self) -> None:
        super().__init__(LINEAR)

    def make_branch(self, module: Any, init_std: float) -> Branch:  # an escnn Linear (untyped)
        rep_in, rep_out = field_rep(module.in_type), field_rep(module.out_type)
        return DenseBranch(rep_in.dim, rep_out.dim, init_std, rep_in, rep_out)


def is_geometric_tensor(x: Any) -> bool:
    """Whether ``x`` is an escnn ``GeometricTensor`` (checked without importing escnn)."""
    return type(x).__name__ == "GeometricTensor" and hasattr(x, "type") and hasattr(x, "tensor")


def transform_field(x: torch.Tensor, field_type: Any, g: Any) -> torch.Tensor:
    """``g`` acting on a plain tensor laid out as ``field_type`` (escnn's ``transform``: grid and fibres), float64."""
    return import_escnn().nn.GeometricTensor(x.detach().to(torch.float64), field_type).transform(g).tensor
