"""The whole-model equivariance measurement: every case of the group is tested, a check that tests nothing or whose
error is not finite never passes, and zero trials or samples are refused."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from relaxcli import EquivarianceError
from relaxcli.core.projection import verify_equivariant
from relaxcli.testing import assert_equivariant, equivariance_error

SPEC_IN = ["cartesian_points", "1o", None]
SPEC_OUT = "cartesian_points"


def nbody_inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(batch, 5, 3, generator=g, dtype=torch.float64)
    vel = torch.randn(batch, 5, 3, generator=g, dtype=torch.float64)
    return pos, vel, torch.ones(batch, 5, 1, dtype=torch.float64)


def step(pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    """Exactly E(3)-equivariant: points moved along their velocities."""
    return pos + 0.1 * charges * vel


class Step(nn.Module):
    """:func:`step` with a weight (and a constant shift, which breaks rotations, when ``shift`` is non-zero)."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))
        self.shift = nn.Parameter(torch.full((3,), shift, dtype=torch.float64))

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        return pos + self.scale * charges * vel + self.shift


def test_every_case_of_the_group_is_tested_and_counted() -> None:
    report = equivariance_error(step, nbody_inputs(), SPEC_IN, SPEC_OUT, ntrials=2)
    assert report.elements == {"rotation": 2, "rotation+translation": 2, "parity": 2, "parity+translation": 2}
    assert set(report.cases) == set(report.elements) and report.tested() == 8
    assert report.relative < 1e-12 and report.finite()
    assert report.describe() == (
        "rotation ×2, rotation+translation ×2, parity ×2, parity+translation ×2 (8 group elements)"
    )
    report.samples = 3
    assert report.describe().endswith("(8 group elements, 3 samples)")


def test_the_recipe_switches_describe_the_group() -> None:
    # SO(3) without translations: rotations only; the switches say what the group is, the cases follow from it
    so3 = equivariance_error(step, nbody_inputs(), SPEC_IN, SPEC_OUT, do_parity=False, do_translation=False)
    assert so3.elements == {"rotation": 3}
    # parity acts on nothing here (even irreps, untouched tensors): it is the identity, so it is not a case
    even = equivariance_error(lambda x: 2 * x, (torch.randn(4, 3, dtype=torch.float64),), ["1e"], "1e")
    assert even.elements == {"rotation": 3}
    # an odd irrep anywhere (here only the output) brings parity in
    odd = equivariance_error(lambda x: x.sum(-1, keepdim=True), (torch.randn(4, 3, dtype=torch.float64),), ["1e"], "0o")
    assert odd.elements == {"rotation": 3, "parity": 3} and odd.cases["parity"] > 1e-3


def test_a_non_equivariant_model_fails_at_one_trial_and_one_sample() -> None:
    model = Step(shift=1.0)
    report = equivariance_error(model, nbody_inputs(batch=1), SPEC_IN, SPEC_OUT, ntrials=1)
    assert report.tested() == 4 and report.relative > 1e-3
    with pytest.raises(EquivarianceError, match=r"not equivariant.*tested rotation ×1"):
        verify_equivariant(model, nbody_inputs(batch=1), SPEC_IN, SPEC_OUT, 1e-5, ntrials=1, samples=1)


@pytest.mark.parametrize("ntrials", [0, -1, True, 1.5])
def test_zero_or_bad_trials_are_refused(ntrials: object) -> None:
    with pytest.raises(ValueError, match="ntrials must be a positive integer"):
        equivariance_error(step, nbody_inputs(), SPEC_IN, SPEC_OUT, ntrials=ntrials)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ntrials must be a positive integer"):
        assert_equivariant(step, nbody_inputs(), SPEC_IN, SPEC_OUT, ntrials=ntrials)


def test_zero_samples_are_refused() -> None:
    empty = tuple(x[:0] for x in nbody_inputs())
    with pytest.raises(ValueError, match=r"input 0 .*has no samples"):
        equivariance_error(step, empty, SPEC_IN, SPEC_OUT)
    with pytest.raises(ValueError, match="has no samples"):
        assert_equivariant(step, empty, SPEC_IN, SPEC_OUT)
    # an output with nothing in it compares nothing
    with pytest.raises(ValueError, match="output 0 is empty"):
        equivariance_error(lambda p, v, q: p[:, :0], nbody_inputs(), SPEC_IN, SPEC_OUT)


def test_outputs_and_output_specs_must_match() -> None:
    with pytest.raises(ValueError, match="returned 2 outputs but 1 output specs"):
        equivariance_error(lambda p, v, q: (p, v), nbody_inputs(), SPEC_IN, SPEC_OUT)


@pytest.mark.parametrize("tolerance", [0.0, -1e-5, math.nan, math.inf])
def test_bad_tolerances_are_refused(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance must be a positive finite number"):
        assert_equivariant(step, nbody_inputs(), SPEC_IN, SPEC_OUT, tolerance=tolerance)
    with pytest.raises(ValueError, match="tolerance must be a positive finite number"):
        verify_equivariant(Step(), nbody_inputs(), SPEC_IN, SPEC_OUT, tolerance=tolerance)


def test_a_nan_output_is_never_a_pass() -> None:
    def nan_step(pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        return step(pos, vel, charges) * torch.nan

    report = equivariance_error(nan_step, nbody_inputs(), SPEC_IN, SPEC_OUT)
    assert math.isnan(report.absolute) and math.isnan(report.relative) and not report.finite()
    assert all(math.isnan(v) for v in report.cases.values())
    with pytest.raises(AssertionError):
        assert_equivariant(nan_step, nbody_inputs(), SPEC_IN, SPEC_OUT, tolerance=1e300)
    # one NaN among finite errors is not dropped by taking the maximum
    calls = {"n": 0}

    def late_nan(pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = step(pos, vel, charges)
        return out * torch.nan if calls["n"] == 3 else out

    late = equivariance_error(late_nan, nbody_inputs(), SPEC_IN, SPEC_OUT)
    assert math.isnan(late.relative) and math.isnan(late.cases["rotation"])
    assert late.cases["parity"] < 1e-12


def test_an_infinite_output_is_never_a_pass() -> None:
    report = equivariance_error(lambda p, v, q: p * math.inf, nbody_inputs(), SPEC_IN, SPEC_OUT)
    assert not report.finite()


def test_verify_refuses_non_finite_weights_and_errors() -> None:
    model = Step()
    assert verify_equivariant(model, nbody_inputs(), SPEC_IN, SPEC_OUT, 1e-10, samples=3).samples == 3
    with torch.no_grad():
        model.scale.fill_(math.nan)
    with pytest.raises(EquivarianceError, match=r"1 weight tensor holds NaN or inf \(scale\)"):
        verify_equivariant(model, nbody_inputs(), SPEC_IN, SPEC_OUT, 1e300)

    class NanOut(Step):
        def forward(self, pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
            return super().forward(pos, vel, charges) / 0.0 * 0.0

    with pytest.raises(EquivarianceError, match="not finite"):
        verify_equivariant(NanOut(), nbody_inputs(), SPEC_IN, SPEC_OUT, 1e300)


def test_the_report_stays_plain_data() -> None:
    report = equivariance_error(step, nbody_inputs(), SPEC_IN, SPEC_OUT, ntrials=1)
    data = json.loads(json.dumps(dataclasses.asdict(report)))
    assert data["elements"]["rotation"] == 1 and data["samples"] is None and data["finite_group"] is None
