"""A bias-free ``nn.Linear`` VN map (the Vector Neurons authors' style) runs fused with its branch: one product."""

from __future__ import annotations

import copy

import torch
from torch import nn

import relaxcli
from relaxcli.core.reps import default_dtype
from relaxcli.ops import VectorNeuronAdapter, registered_ops


class _AuthorsStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.map_to_feat = nn.Linear(4, 6, bias=False)
        self.map_to_dir = nn.Linear(6, 5, bias=False)
        self.head = nn.Linear(5, 2)  # with a bias: invariant head, no site

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, 3, N]
        x = self.map_to_feat(x.transpose(1, -1)).transpose(1, -1)
        x = self.map_to_dir(x.transpose(1, -1)).transpose(1, -1)
        return self.head(x.norm(dim=2).mean(dim=-1))


def test_bias_free_linear_maps_fuse_and_equal_the_separate_products() -> None:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = _AuthorsStyle()
    adapters = [VectorNeuronAdapter("torch.nn.Linear"), *registered_ops()]
    fused = relaxcli.relax(model, adapters=adapters, init_std=0.1)
    separate = relaxcli.relax(copy.deepcopy(model), adapters=adapters, init_std=0.1, fuse=False)
    separate.branches.load_state_dict(fused.branches.state_dict())
    assert [s.path for s in fused.sites] == ["map_to_feat", "map_to_dir"]
    assert all(s.fused for s in fused.sites) and not any(s.fused for s in separate.sites)
    x = torch.randn(3, 4, 3, 7, dtype=torch.float64)
    for theta in (0.0, 0.6):
        fused.set_theta(theta)
        separate.set_theta(theta)
        assert torch.allclose(fused(x), separate(x), rtol=1e-12, atol=1e-12)
    with fused.projected():
        assert torch.equal(fused(x), model(x))
