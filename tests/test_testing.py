"""The public test helpers (``relaxcli.testing``), as another library's test suite would use them."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from relaxcli.core.reps import default_dtype
from relaxcli.errors import RelaxError
from relaxcli.tasks import SEGNN, VNPointNet
from relaxcli.testing import assert_relaxable

NBODY_IN = ["cartesian_points", "1o", None]


def nbody_inputs(batch: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    pos, vel = (
        torch.randn(batch, 5, 3, generator=g, dtype=torch.float64),
        torch.randn(batch, 5, 3, generator=g, dtype=torch.float64),
    )
    return pos, vel, torch.randint(0, 2, (batch, 5, 1), generator=g).double() * 2 - 1


def test_segnn_is_relaxable_in_float64() -> None:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = SEGNN("4x0e+4x1o", num_layers=2)
    report = assert_relaxable(model, nbody_inputs(), NBODY_IN, "cartesian_points", tolerance=1e-10)
    assert report.mode == "fx" and len(report.sites) == 11
    assert report.relaxed.relative > 1e-3 and report.projected.relative < 1e-10 and report.reloaded.relative < 1e-10


@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_vn_pointnet_is_relaxable_in_both_graph_modes(mode: str) -> None:
    torch.manual_seed(1)
    with default_dtype(torch.float64):
        model = VNPointNet(4, hidden=8, num_layers=2, k=4)
    clouds = torch.randn(2, 32, 3, dtype=torch.float64)
    report = assert_relaxable(
        model, (clouds,), ["cartesian_points"], "4x0e", tolerance=1e-9, relax_kwargs={"mode": mode}
    )
    assert report.mode == mode and len(report.sites) == 5


class Shifted(torch.nn.Module):
    """An SEGNN plus a learnable constant shift of its output: not translation equivariant."""

    def __init__(self) -> None:
        super().__init__()
        self.segnn = SEGNN("4x0e+4x1o", num_layers=1)
        self.shift = torch.nn.Parameter(torch.ones(3))

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.segnn(pos, vel, q) + self.shift


def test_a_model_that_is_not_equivariant_fails() -> None:
    with default_dtype(torch.float64):
        model = Shifted()
    with pytest.raises(AssertionError, match="relative equivariance error"):
        assert_relaxable(model, nbody_inputs(), NBODY_IN, "cartesian_points", tolerance=1e-10)


def test_sites_between_invariants_cannot_break_equivariance_and_say_so() -> None:
    with default_dtype(torch.float64):
        model = torch.nn.Sequential(o3.Linear("4x0e", "4x0e"))
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(RelaxError, match="maps invariants to invariants"):  # relax gives such sites no branch
        assert_relaxable(model, (x,), ["4x0e"], "4x0e")
    with pytest.raises(AssertionError, match="did not break equivariance"):  # and with one, nothing can break
        assert_relaxable(model, (x,), ["4x0e"], "4x0e", relax_kwargs={"scalar_sites": True})
