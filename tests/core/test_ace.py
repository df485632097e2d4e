"""ACE on a problem whose answer is known.

The model has two relaxed sites: ``field`` maps (charge 0e, velocity 1o) to a vector, ``drift`` maps a second vector
to a vector. The symmetric target is equivariant in both; the broken target adds ``charge · E · z`` (a uniform field
along z, as in the N-body variant), which only the ``field`` site can express, and only through its branch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from e3nn import o3
from torch import nn

from relaxcli import Regularizer, make_schedule, relax
from relaxcli.core.schedules import Ace, AceElastic


class TwoSites(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.field = o3.Linear("1x0e+1x1o", "1x1o")
        self.drift = o3.Linear("1x1o", "1x1o")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.field(x) + self.drift(w)


def _data(n: int, field: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)
    y = 0.7 * x[:, 1:] - 0.4 * w
    y[:, 1] += field * x[:, 0]  # e3nn's l=1 basis is (y, z, x): index 1 is z
    return x, w, y


def _train(schedule_name: str, field: float, steps: int = 1500, **kwargs: float | str) -> tuple[Ace, list, nn.Module]:
    torch.manual_seed(0)
    relaxed = relax(TwoSites(), init_std=0.0)
    ace = make_schedule(schedule_name, steps, **kwargs)
    extra = ace.attach(relaxed)
    params = [p for p in relaxed.parameters() if all(p is not e for e in extra)]
    opt = torch.optim.Adam([{"params": params}, {"params": extra, "weight_decay": 0.0}], lr=3e-3)
    reg = Regularizer(weight=0.01)
    x, w, y = _data(512, field, seed=1)
    history = []
    for step in range(steps):
        loss = nn.functional.mse_loss(relaxed(x, w), y) + reg(relaxed).total + ace.penalty(relaxed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ace.after_step(relaxed, step)
        history.append(ace.site_state(relaxed))
    return ace, history, relaxed


def test_ace_drives_gamma_down_while_the_duals_rise() -> None:
    _, history, relaxed = _train("ace", field=0.0, steps=300, dual_lr=0.01, dual="ascent")  # ACE's own update
    gamma = torch.tensor([[h[p]["gamma"] for p in ("field", "drift")] for h in history])
    lam = torch.tensor([[h[p]["lambda"] for p in ("field", "drift")] for h in history])
    assert (gamma[0] > 0.99).all() and (gamma[-1].abs() < 0.3).all()
    assert (gamma[1:] <= gamma[:-1] + 1e-4).all()  # the first descent (undamped, it would overshoot later)
    positive = gamma[:-1] > 0  # while γ > 0 the dual variable must grow, by exactly η_d γ after each step
    assert torch.allclose((lam[1:] - lam[:-1])[positive], 0.01 * gamma[1:][positive], atol=1e-6)
    assert (lam[-1] > 1.0).all()
    # γ is each branch's θ, a learnable parameter with the same state_dict key as for the hand schedules
    assert isinstance(relaxed.branches["field"].theta, nn.Parameter)
    assert set(relaxed.branches.state_dict()) == {"field.weight", "field.theta", "drift.weight", "drift.theta"}


def test_elastic_on_symmetric_data_releases_gamma_and_slack() -> None:
    _, history, _ = _train("ace_elastic", field=0.0)
    end = history[-1]
    for site in ("field", "drift"):
        assert abs(end[site]["gamma"]) < 0.1 and end[site]["u"] < 0.1, end
        assert end[site]["u"] >= 0.0 and end[site]["lambda"] >= 0.0


def test_elastic_on_broken_data_keeps_gamma_where_it_is_needed() -> None:
    _, history, relaxed = _train("ace_elastic", field=0.5)
    end = history[-1]
    assert abs(end["field"]["gamma"]) > 0.1, end  # the field site carries the z-drift through its branch
    assert abs(end["drift"]["gamma"]) < 0.1, end  # the other one needs no relaxation
    assert end["field"]["lambda"] > 5 * end["drift"]["lambda"]
    # the kept model fits the broken data; its projection cannot (the symmetry gap)
    x, w, y = _data(512, 0.5, seed=2)
    with torch.no_grad():
        kept = nn.functional.mse_loss(relaxed(x, w), y)
        with relaxed.projected():
            projected = nn.functional.mse_loss(relaxed(x, w), y)
    assert kept < 0.5 * projected


def test_state_round_trip_and_argument_checks() -> None:
    ace, _, _ = _train("ace_elastic", field=0.5, steps=20)
    state = ace.state_dict()
    fresh = AceElastic(20)
    fresh.attach(relax(TwoSites()))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.lam, ace.lam) and torch.equal(fresh.u.detach(), ace.u.detach())
    with pytest.raises(ValueError, match="dual_lr must be > 0"):
        Ace(10, dual_lr=0.0)
    with pytest.raises(ValueError, match="rho must be > 0"):
        AceElastic(10, rho=-1.0)


def _drive(dual: str, damping: float = 0.0, steps: int = 600, lr: float = 1e-2) -> torch.Tensor:
    """γ per step under a synthetic task that pulls γ up a little, with noise (no training): the dual dynamics
    alone, with γ updated by Adam as in the trainer."""
    relaxed = relax(TwoSites(), init_std=0.0)
    ace = Ace(steps, dual_lr=0.01, dual=dual, damping=damping)
    gammas = ace.attach(relaxed)
    opt = torch.optim.Adam(gammas, lr=lr)
    g = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        gamma = ace.gammas(relaxed)
        task = ((0.02 * torch.randn(len(gammas), generator=g) - 0.01) * gamma).sum()
        opt.zero_grad()
        (task + ace.penalty(relaxed)).backward()
        opt.step()
        ace.after_step(relaxed, step)
        history.append(ace.gammas(relaxed).detach().clone())
    return torch.stack(history)


def _sign_changes_after_first_crossing(gamma: torch.Tensor) -> int:
    """Sign changes of one site's γ after it first reaches 0 or below."""
    crossed = (gamma <= 0).nonzero()
    if not len(crossed):
        return 0
    signs = torch.sign(gamma[int(crossed[0]) :])
    return int(((signs[1:] * signs[:-1]) < 0).sum())


@pytest.mark.parametrize("dual", ["pi", "augmented"])
def test_damped_duals_settle_at_zero_without_a_sign_flip(dual: str) -> None:
    history = _drive(dual, damping=100.0)
    assert history[0].min() > 0.9
    for site in range(history.shape[1]):
        assert _sign_changes_after_first_crossing(history[:, site]) == 0
    assert history[-100:].abs().max() <= 1e-2  # and it stays there


def test_plain_ascent_still_oscillates() -> None:
    history = _drive("ascent")  # the old behaviour, still available
    assert _sign_changes_after_first_crossing(history[:, 0]) >= 1
    assert history[-1].abs().max() > 0.1


def test_pi_dual_is_integral_plus_proportional_and_resumes_old_states() -> None:
    relaxed = relax(TwoSites(), init_std=0.0)
    ace = Ace(10, dual_lr=0.1, dual="pi", damping=2.0, nu=0.5)
    ace.attach(relaxed)
    ace.after_step(relaxed, 0)  # γ = 1: λ_I = 0.1, ξ = 0.5, λ = 0.1 + 2·0.5
    assert torch.allclose(ace.lam, torch.full((2,), 1.1)) and torch.allclose(ace.lam_i, torch.full((2,), 0.1))
    fresh = Ace(10, dual="pi", damping=2.0)
    fresh.attach(relax(TwoSites()))
    fresh.load_state_dict({"lam": torch.tensor([0.3, -0.2])})  # a checkpoint from before the damped duals
    assert torch.equal(fresh.lam_i, torch.tensor([0.3, -0.2])) and torch.equal(fresh.xi, torch.zeros(2))
    with pytest.raises(ValueError, match="dual must be one of ascent, pi, augmented"):
        Ace(10, dual="adam")
    with pytest.raises(ValueError, match="nu must be in"):
        Ace(10, dual="pi", nu=1.0)


def test_grad_clip_bounds_the_model_and_leaves_the_learnt_gamma_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nbody_recipe: Callable[..., Path]
) -> None:
    """``trainer.grad_clip`` scales the model's and the branches' gradient; γ's gradient (where the dual variable
    λ lives, growing until the constraint holds) is not part of that norm and is not scaled with it."""
    from relaxcli.recipe import load_recipe
    from relaxcli.run.trainer import Trainer

    monkeypatch.setenv("RELAX_CACHE", str(tmp_path / "cache"))
    path = nbody_recipe(relax={"theta": {"schedule": "ace"}}, trainer={"grad_clip": 1e-6, "batch_size": 10})
    trainer = Trainer(load_recipe(path), tmp_path / "run", progress=False)
    gammas = trainer.relaxation.schedule_params
    assert gammas and not any(g is p for g in gammas for p in trainer.clipped)
    ace = trainer.relaxation.schedule
    ace.lam.fill_(5.0)  # as if the dual ascent had run for a while: ∂L/∂γ_i includes λ_i = 5
    trainer.dry_run()
    clipped_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.clipped if p.grad is not None]))
    assert float(clipped_norm) <= 1e-6 * (1 + 1e-4)
    assert all(float(g.grad.abs()) > 1.0 for g in gammas)  # λ = 5 and a small task gradient: not clipped to 1e-6


def test_a_gamma_that_adam_cannot_bring_to_zero_in_time_is_warned_about(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    """Under Adam γ moves by about its lr per step at most: from γ = 1 at lr 3e-3 it needs ~333 steps, and the
    tiny recipe has 16. ``--dry-run`` and ``relax train`` say so and name the key to change; with a ``gamma_lr``
    that reaches 0 by mid-training they say nothing."""
    slow = nbody_recipe("slow", relax={"theta": {"schedule": "ace_elastic"}})
    proc = relax_cli("train", slow, "--dry-run", cwd=tmp_path)
    warning = " ".join(proc.stderr.split())
    assert "warning: relax.theta: under Adam γ moves by at most about its lr (0.003) per step" in warning
    assert "needs at least 333 steps to reach 0, and training has 16" in warning
    assert "Set relax.theta.gamma_lr to at least 0.12" in warning
    fast = nbody_recipe("fast", relax={"theta": {"schedule": "ace_elastic", "gamma_lr": 0.2}})
    assert "gamma_lr" not in relax_cli("train", fast, "--dry-run", cwd=tmp_path).stderr
    # SGD's step scales with the gradient: no such bound, no warning
    sgd = nbody_recipe(
        "sgd", relax={"theta": {"schedule": "ace"}}, optimizer={"_component_": "torch.optim.SGD", "lr": 0.01}
    )
    assert "gamma_lr" not in relax_cli("train", sgd, "--dry-run", cwd=tmp_path).stderr
