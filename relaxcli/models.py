"""Reference models. They are ordinary user models: ``relax`` finds their equivariant ops through the graph pass like
any other model's, with no special cases.

- :class:`SEGNN` -- a steerable E(3)-equivariant message-passing network for N-body systems (Brandstetter et al.,
  2022), built from e3nn tensor products, gates and ``o3.Linear``. Input positions, velocities and charges of each
  system ``[B, N, 3]``, ``[B, N, 3]``, ``[B, N, 1]``; output predicted positions ``[B, N, 3]``.

Example:
    >>> model = SEGNN(hidden_irreps="16x0e+16x1o", num_layers=2)
    >>> model(pos, vel, charges).shape
    torch.Size([100, 5, 3])
"""

from __future__ import annotations

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from .reps import default_dtype

__all__ = ["SEGNN", "fully_connected_edges"]


def fully_connected_edges(num_systems: int, num_nodes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and destination node indices of all directed edges i != j within each system (flattened nodes)."""
    # src-major, destinations in increasing order, without a boolean mask (so torch.export can keep the batch
    # dimension symbolic): for source i the k-th destination is k, or k + 1 once k reaches i
    src = torch.arange(num_nodes, device=device).repeat_interleave(num_nodes - 1)
    k = torch.arange(num_nodes - 1, device=device).repeat(num_nodes)
    dst = k + (k >= src).to(k.dtype)
    offset = (torch.arange(num_systems, device=device) * num_nodes)[:, None]
    return (src[None] + offset).reshape(-1), (dst[None] + offset).reshape(-1)


class _GatedTP(nn.Module):
    """``Gate(FullyConnectedTensorProduct(x, attr))``: an equivariant nonlinear layer with irreps_out features."""

    def __init__(self, irreps_in: o3.Irreps, irreps_attr: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = enn.Gate(scalars, [torch.nn.functional.silu] * len(scalars),
                             gates, [torch.sigmoid] * len(gates), gated)
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_attr, self.gate.irreps_in)

    def forward(self, x: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        return self.gate(self.tp(x, attr))


class _SEGNNLayer(nn.Module):
    def __init__(self, hidden: o3.Irreps, attr: o3.Irreps) -> None:
        super().__init__()
        self.message1 = _GatedTP((hidden + hidden + o3.Irreps("2x0e")).simplify(), attr, hidden)
        self.message2 = _GatedTP(hidden, attr, hidden)
        self.update1 = _GatedTP((hidden + hidden).simplify(), attr, hidden)
        self.update2 = o3.FullyConnectedTensorProduct(hidden, attr, hidden)

    def forward(self, h: torch.Tensor, edge_attr: torch.Tensor, node_attr: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor, edge_scalars: torch.Tensor, inv_degree: float) -> torch.Tensor:
        m = self.message1(torch.cat([h[dst], h[src], edge_scalars], dim=-1), edge_attr)
        m = self.message2(m, edge_attr)
        agg = h.new_zeros(h.shape[0], m.shape[-1]).index_add(0, dst, m) * inv_degree
        u = self.update1(torch.cat([h, agg], dim=-1), node_attr)
        return h + self.update2(u, node_attr)


class SEGNN(nn.Module):
    """Steerable E(3)-equivariant GNN for N-body prediction (fully connected systems of ``num_nodes`` particles).

    Node input features: ``|v|`` (0e), charge (0e), position centred per system (1o), velocity (1o). Edge attributes
    are spherical harmonics of relative positions up to ``lmax_attr``; node attributes are the mean of the edge
    attributes plus the harmonics of the velocity. The output is ``pos + displacement``.

    Args:
        hidden_irreps: hidden node features, e.g. ``"16x0e+16x1o"``.
        num_layers: message-passing layers.
        lmax_attr: degree of the spherical-harmonic attributes.
    """

    def __init__(self, hidden_irreps: str = "16x0e+16x1o", num_layers: int = 4, lmax_attr: int = 1) -> None:
        super().__init__()
        self.hidden_irreps = o3.Irreps(hidden_irreps)
        self.irreps_in = o3.Irreps("2x0e+2x1o")
        self.irreps_attr = o3.Irreps.spherical_harmonics(lmax_attr)
        self.sh = o3.SphericalHarmonics(self.irreps_attr, normalize=True, normalization="integral")
        self.embed = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_attr, self.hidden_irreps)
        self.layers = nn.ModuleList(_SEGNNLayer(self.hidden_irreps, self.irreps_attr) for _ in range(num_layers))
        self.readout1 = _GatedTP(self.hidden_irreps, self.irreps_attr, self.hidden_irreps)
        self.readout2 = o3.Linear(self.hidden_irreps, "1x1o")

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        num_systems, num_nodes = pos.shape[0], pos.shape[1]
        x = pos.reshape(-1, 3)
        v = vel.reshape(-1, 3)
        q = charges.reshape(-1, 1)
        centred = (pos - pos.mean(dim=1, keepdim=True)).reshape(-1, 3)  # per system, never per particle
        src, dst = fully_connected_edges(num_systems, num_nodes, pos.device)
        rel = x[dst] - x[src]
        edge_scalars = torch.cat([(rel * rel).sum(-1, keepdim=True), q[dst] * q[src]], dim=-1)
        edge_attr = self.sh(rel)
        inv_degree = 1.0 / (num_nodes - 1)
        node_attr = edge_attr.new_zeros(x.shape[0], edge_attr.shape[-1]).index_add(0, dst, edge_attr) * inv_degree
        node_attr = node_attr + self.sh(v)
        h = torch.cat([v.norm(dim=-1, keepdim=True), q, centred, v], dim=-1)
        h = self.embed(h, node_attr)
        for layer in self.layers:
            h = layer(h, edge_attr, node_attr, src, dst, edge_scalars, inv_degree)
        h = self.readout1(h, node_attr)
        return pos + self.readout2(h).reshape(num_systems, num_nodes, 3)


# ----------------------------------------------------------------------------------------------------------
# VN-PointNet: a rotation-invariant point-cloud classifier built from Vector-Neuron layers (Deng et al., 2021)
# ----------------------------------------------------------------------------------------------------------

from .vn import VNLinear  # noqa: E402  (appended section; the SEGNN above does not need it)

__all__ += ["VNLeakyReLU", "VNPointNet"]


class VNLeakyReLU(nn.Module):
    """Vector-Neuron leaky ReLU on ``[B, C, 3, ...]``: per channel a direction ``k = VNLinear(x)`` is learnt, and
    ``q`` is kept where ``⟨q, k⟩ >= 0`` and replaced by ``q − (⟨q, k⟩ / (‖k‖² + eps)) k`` (its component orthogonal
    to ``k``) elsewhere; the result is ``slope · q + (1 − slope) · that``. Equivariant under all of O(3): only inner
    products of vectors enter the gate.
    """

    def __init__(self, channels: int, negative_slope: float = 0.2, eps: float = 1e-6) -> None:
        super().__init__()
        self.direction = VNLinear(channels, channels)
        self.negative_slope, self.eps = float(negative_slope), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.direction(x)
        dot = (x * k).sum(dim=2, keepdim=True)
        k_norm2 = (k * k).sum(dim=2, keepdim=True)
        relu = torch.where(dot >= 0, x, x - (dot / (k_norm2 + self.eps)) * k)
        return self.negative_slope * x + (1.0 - self.negative_slope) * relu

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, eps={self.eps}"


class VNPointNet(nn.Module):
    """Rotation- (and reflection- and translation-) invariant point-cloud classifier from Vector-Neuron layers.

    Input ``points [B, N, 3]``; output logits ``[B, num_classes]``, invariant under ``points -> points Rᵀ + t`` for
    every orthogonal ``R`` (O(3), reflections included) and permutation-invariant over the points.

    1. Centre each cloud on its mean, and lift every point to VN channels ``[B, C0, 3, N]``: the centred point
       ``x_i``, ``M x_i`` with the cloud's second moment ``M = mean_j x_j x_jᵀ`` (a direction that a single-vector
       lift cannot give: VN layers are odd, so a lift of ``x_i`` alone stays parallel to ``x_i``), and, with ``k``,
       the local mean offset ``Σ_j w_ij (x_j − x_i)`` over the ``k`` nearest neighbours with weights
       ``w_ij ∝ d²_(k+1) − d²_ij`` that fall continuously to 0 at the edge of the neighbourhood (so swaps of equally
       distant neighbours under float rounding do not jump).
    2. ``num_layers`` blocks of ``VNLinear`` + :class:`VNLeakyReLU` (each gate owns a ``VNLinear`` too).
    3. Concatenate the cloud's mean feature to every point (as VN-PointNet does), learn a frame of 3 vectors per point
       with a ``VNLinear``, and take the inner products of every channel with it: ``6 · hidden`` invariant scalars per
       point. Invariants are formed *per point, before pooling*: a pooled VN vector of a centrally symmetric cloud
       (sphere, box, cylinder, torus, ...) is zero for any O(3)-equivariant network.
    4. Mean- and max-pool the invariants over points; ``BatchNorm1d`` (as in PointNet's head; it trains several
       times faster here than ``LayerNorm``) and an ``nn.Linear`` MLP give the logits. Being batch-normalised, the
       model needs batches of at least 2 clouds in training mode.

    All shapes are static and there is no data-dependent Python control flow, so ``torch.fx`` traces it and
    :func:`relaxcli.relax` finds every ``VNLinear`` (``2 · num_layers + 1`` sites).

    Args:
        num_classes: number of output logits.
        hidden: VN channels per layer.
        num_layers: VN blocks (at least 1).
        k: neighbours for the local feature (None: no local feature).
        negative_slope: of the VN leaky ReLUs.
        eps: of the VN leaky ReLUs. The gate's learnt direction ``d / ‖d‖`` is ill-conditioned where ``‖d‖ -> 0``; with
            Deng et al.'s 1e-6, float32 rounding is amplified ~10x there and invariance errors of 1e-5 appear. 1e-3
            (small next to the typical ``‖d‖² ~ 0.01-1`` of unit-size clouds) keeps them near 1e-6.
    """

    def __init__(self, num_classes: int, hidden: int = 32, num_layers: int = 3, k: int | None = None,
                 negative_slope: float = 0.2, eps: float = 1e-3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if k is not None and k < 1:
            raise ValueError(f"k must be None or at least 1, got {k}")
        self.num_classes, self.hidden, self.num_layers, self.k = int(num_classes), int(hidden), int(num_layers), k
        in_channels = 2 if k is None else 3
        self.linears = nn.ModuleList(
            VNLinear(in_channels if i == 0 else hidden, hidden) for i in range(num_layers))
        self.acts = nn.ModuleList(VNLeakyReLU(hidden, negative_slope, eps) for _ in range(num_layers))
        self.frame = VNLinear(2 * hidden, 3)
        features = 2 * (2 * hidden * 3)  # (mean, max) x (channels x frame vectors)
        self.head = nn.Sequential(
            nn.BatchNorm1d(features), nn.Linear(features, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, num_classes))

    def lift(self, points: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3]`` points -> ``[B, C0, 3, N]`` VN features (equivariant; translation-invariant)."""
        x = points - points.mean(dim=1, keepdim=True)
        moment = torch.einsum("bni,bnj->bij", x, x) / x.shape[1]
        channels = [x, torch.einsum("bni,bij->bnj", x, moment)]
        if self.k is not None:
            channels.append(self.local_offset(x, self.k))
        return torch.stack(channels, dim=1).transpose(2, 3)

    @staticmethod
    def local_offset(x: torch.Tensor, k: int) -> torch.Tensor:
        """``Σ_j w_ij (x_j − x_i)`` over the ``k + 1`` nearest points (self included), ``w ∝ relu(d²_max − d²)``."""
        n = x.shape[1]
        idx = torch.cdist(x, x).topk(k + 1, dim=-1, largest=False).indices  # [B, N, k+1]; used only for selection
        nbrs = torch.gather(x.unsqueeze(1).expand(-1, n, -1, -1), 2, idx.unsqueeze(-1).expand(-1, -1, -1, 3))
        rel = nbrs - x.unsqueeze(2)  # exact differences: [B, N, k+1, 3]
        d2 = (rel * rel).sum(dim=-1)
        w = torch.relu(d2.amax(dim=-1, keepdim=True) - d2)
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return (w.unsqueeze(-1) * rel).sum(dim=2)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        h = self.lift(points)
        for linear, act in zip(self.linears, self.acts):
            h = act(linear(h))
        h = torch.cat([h, h.mean(dim=-1, keepdim=True).expand_as(h)], dim=1)  # [B, 2H, 3, N]
        frame = self.frame(h)  # [B, 3, 3, N]
        inv = torch.einsum("bcin,bfin->bcfn", h, frame).flatten(1, 2)  # [B, 6H, N], invariant per point
        pooled = torch.cat([inv.mean(dim=-1), inv.amax(dim=-1)], dim=1)
        return self.head(pooled)


# ----------------------------------------------------------------------------------------------------------
# A steerable CNN on a periodic grid (escnn, optional): C_n / D_n equivariant field-to-field regression
# ----------------------------------------------------------------------------------------------------------


class SteerableCNN(nn.Module):
    """escnn CNN for scalar fields on a periodic grid: ``[B, 1, H, W] -> [B, 1, H, W]``, equivariant to C_n or D_n.

    A lifting ``R2Conv`` (trivial -> ``channels`` regular fields), ``num_layers - 2`` regular -> regular
    ``R2Conv``s with ReLU, and a projection back to one trivial field; the output is ``u0 + net(u0)``. Convolutions
    pad circularly, so rotations by 90° and flips of the square periodic grid are exact symmetries. ``in_type`` and
    ``out_type`` are the escnn field types of input and output (``symmetry: {group: escnn, inputs: [in_type],
    output: out_type}``). Needs escnn (``relaxcli[escnn]``, see the README).

    Args:
        group: ``"C"`` (rotations) or ``"D"`` (rotations and flips).
        n: order of the rotations: 1, 2 or 4 (the ones that map the pixel grid onto itself).
        channels: regular fields per hidden layer.
        num_layers: convolutions in total (>= 2).
        kernel_size: odd kernel size.

    Example:
        >>> model = SteerableCNN(group="C", n=4, channels=4)
        >>> model(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, group: str = "C", n: int = 4, channels: int = 8, num_layers: int = 3,
                 kernel_size: int = 5) -> None:
        super().__init__()
        from .steerable import import_escnn

        escnn = import_escnn()
        gspaces, esnn = escnn.gspaces, escnn.nn
        if group not in ("C", "D") or n not in (1, 2, 4):
            raise ValueError(f"group must be 'C' or 'D' and n one of 1, 2, 4; got group={group!r}, n={n}")
        if num_layers < 2 or kernel_size % 2 == 0:
            raise ValueError(f"need num_layers >= 2 and an odd kernel_size, got {num_layers}, {kernel_size}")
        dtype = torch.get_default_dtype()
        with default_dtype(torch.float32):  # escnn samples its bases in float32 and fails under a float64 default
            gs = gspaces.rot2dOnR2(n) if group == "C" else gspaces.flipRot2dOnR2(n)
            self.in_type = esnn.FieldType(gs, [gs.trivial_repr])
            hidden = esnn.FieldType(gs, channels * [gs.regular_repr])
            self.out_type = esnn.FieldType(gs, [gs.trivial_repr])
            pad = kernel_size // 2
            layers: list[nn.Module] = []
            types = [self.in_type] + [hidden] * (num_layers - 1) + [self.out_type]
            for i, (a, b) in enumerate(zip(types[:-1], types[1:])):
                layers.append(esnn.R2Conv(a, b, kernel_size, padding=pad, padding_mode="circular"))
                if i < num_layers - 1:
                    layers.append(esnn.ReLU(b))
            self.net = esnn.SequentialModule(*layers)
        self.to(dtype)

    def forward(self, u0: torch.Tensor) -> torch.Tensor:
        from escnn.nn import GeometricTensor  # imported by __init__ already

        return u0 + self.net(GeometricTensor(u0, self.in_type)).tensor


__all__ += ["SteerableCNN"]
