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

__all__ = ["SEGNN", "fully_connected_edges"]


def fully_connected_edges(num_systems: int, num_nodes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and destination node indices of all directed edges i != j within each system (flattened nodes)."""
    idx = torch.arange(num_nodes, device=device)
    src, dst = idx.repeat_interleave(num_nodes), idx.repeat(num_nodes)
    keep = src != dst
    offset = (torch.arange(num_systems, device=device) * num_nodes)[:, None]
    return (src[keep][None] + offset).reshape(-1), (dst[keep][None] + offset).reshape(-1)


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
