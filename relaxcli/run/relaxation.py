"""The relaxation as the trainer drives it: the relaxed model, its regulariser and its θ schedule behind one
interface, and :class:`NoRelaxation`, the same interface doing nothing, for a standard run (``relax.enabled:
false``). The trainer's loop reads straight through either.

Per step: ``before_step`` (the schedule sets θ) → forward → ``regularize`` (λ·Σ terms over the captured inputs)
and ``penalty`` (a learnt schedule's own loss terms, e.g. ACE's Lagrangian) → backward, optimiser step →
``after_step`` (e.g. ACE's dual ascent).

Example:
    >>> relaxation = Relaxation(relax(model), Regularizer(0.01), make_schedule("triangle", total_steps=1000))
    >>> optimizer = torch.optim.Adam(relaxation.param_groups(), lr=1e-3)
    >>> relaxation.before_step(step); out = relaxation.net(x)
    >>> reg, record = relaxation.regularize()
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..core.graph import RelaxedModel, Site
from ..core.regularizers import Regularizer
from ..core.schedules import Schedule

__all__ = ["Relaxation", "NoRelaxation"]

#: Optimisers whose step on a parameter is about its lr at most, whatever the gradient (normalised updates).
_ADAM_LIKE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam)


class Relaxation:
    """A relaxed model trained with a regulariser and a θ schedule."""

    enabled = True

    def __init__(self, relaxed: RelaxedModel, regularizer: Regularizer, schedule: Schedule) -> None:
        self.relaxed, self.regularizer, self.schedule = relaxed, regularizer, schedule
        self.schedule_params: list[torch.Tensor] = []  # a learnt schedule's own variables, set by param_groups
        self._last: dict[str, float] = {}  # the terms of the latest evaluated step (regularizer.every > 1)

    @property
    def net(self) -> nn.Module:
        """The module the trainer calls."""
        return self.relaxed

    @property
    def sites(self) -> list[Site]:
        return self.relaxed.sites

    @property
    def mode(self) -> str | None:
        return self.relaxed.mode

    @property
    def keeps_relaxation(self) -> bool:
        """Whether the relaxed model itself is a deliverable (ace_elastic keeps γ), beside its projection."""
        return self.schedule.keeps_relaxation

    def param_groups(self) -> Any:
        """What the optimiser trains: the model and branches; a learnt schedule's own variables (ACE's γ, u) in a
        group without weight decay, at the schedule's lr when it has one. Call once, after ``.to(device)``."""
        extra = self.schedule_params = self.schedule.attach(self.relaxed)
        if not extra:
            return self.relaxed.parameters()
        ids = {id(p) for p in extra}
        group: dict[str, Any] = {"params": extra, "weight_decay": 0.0}
        if self.schedule.lr is not None:
            group["lr"] = self.schedule.lr
        return [{"params": [p for p in self.relaxed.parameters() if id(p) not in ids]}, group]

    def gamma_budget_problem(self, optimizer: torch.optim.Optimizer, total_steps: int) -> str | None:
        """Why a learnt γ (ACE) cannot reach 0 in time, or None. Adam-type optimisers move a parameter by at most
        about its lr per step whatever its gradient, so γ needs at least ``gamma_init / lr`` steps to fall to 0;
        when that is more than 80% of training, the projected model (θ = 0) is left almost no steps to take over
        what the branches carry. (Measured: on 480-step point-cloud runs γ fell only from 1 to 0.39 and the
        projected model stayed at chance.)"""
        gamma_init = getattr(self.schedule, "gamma_init", None)
        if gamma_init is None or not self.schedule_params or not isinstance(optimizer, _ADAM_LIKE):
            return None
        ids = {id(p) for p in self.schedule_params}
        lr = next(float(g["lr"]) for g in optimizer.param_groups if any(id(p) in ids for p in g["params"]))
        needed = abs(gamma_init) / lr if lr > 0 else math.inf
        if needed <= 0.8 * total_steps:
            return None
        return (
            f"relax.theta: under {type(optimizer).__name__} γ moves by at most about its lr ({lr:g}) per step, so "
            f"from gamma_init {gamma_init:g} it needs at least {needed:.0f} steps to reach 0, and training has "
            f"{total_steps}: the projected model would have little or no training of its own. Set "
            f"relax.theta.gamma_lr to at least {abs(gamma_init) / (0.5 * total_steps):.2g} (γ at 0 by mid-training), "
            "lower relax.theta.gamma_init, or train longer"
        )

    def before_step(self, step: int) -> None:
        self.schedule.before_step(self.relaxed, step)

    def regularize(self) -> tuple[torch.Tensor | float, dict[str, float]]:
        """The weighted regulariser over the inputs the last forward pass captured, and its numbers to log."""
        reg = self.regularizer(self.relaxed)
        if reg.evaluated:  # an amortised regulariser (every: k) logs the terms of its latest evaluation in between
            self._last = {"reg": float(reg.total.detach()), **reg.summary()}
        return reg.total, {**self._last, **self.schedule.summary(self.relaxed)}

    def penalty(self) -> torch.Tensor | None:
        return self.schedule.penalty(self.relaxed)

    def after_step(self, step: int) -> None:
        self.schedule.after_step(self.relaxed, step)

    @contextlib.contextmanager
    def projected(self) -> Iterator[None]:
        """Within the block the branches are off: the net computes the projected model (θ = 0)."""
        with self.relaxed.projected():
            yield

    def release(self) -> None:
        """Drop inputs captured for the regulariser (after an evaluation pass)."""
        for s in self.relaxed.sites:
            s.branch.captured.clear()

    def theta(self) -> float | None:
        """The mean θ (γ) over the sites."""
        return self.schedule.summary(self.relaxed)["theta"]

    def summary(self) -> dict[str, float]:
        """A few numbers for the progress line (θ, and a learnt schedule's means)."""
        return self.schedule.summary(self.relaxed)

    def site_stats(self) -> dict[str, dict[str, float]]:
        """Per site: θ, ‖B‖_F and the data-free Lie-derivative and discrete norms of the branch (``SITE_KEYS``),
        and the schedule's own numbers (ACE: γ, λ, u)."""
        out = {}
        with torch.no_grad():
            extra = self.schedule.site_state(self.relaxed)
            terms = self.regularizer.weight_terms(self.relaxed)
            for s in self.relaxed.sites:
                t = terms[s.path]
                out[s.path] = {
                    "theta": float(s.branch.theta),
                    "weight_norm": float(t.projection),
                    "lie": float(t.lie),
                    "discrete": float(t.discrete),
                    **extra.get(s.path, {}),
                }
        return out

    def branch_state(self) -> dict[str, torch.Tensor]:
        return self.relaxed.branches.state_dict()

    def load_branch_state(self, state: dict[str, torch.Tensor]) -> None:
        self.relaxed.branches.load_state_dict(state, strict=True)

    def state_dict(self) -> dict[str, Any] | None:
        """The schedule's state (ACE: λ, u), for resuming."""
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.schedule.load_state_dict(state)


class NoRelaxation(Relaxation):
    """A standard run: the user's model as it is, no branches, no regulariser, no schedule."""

    enabled = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.schedule_params: list[torch.Tensor] = []

    @property
    def net(self) -> nn.Module:
        return self.model

    @property
    def sites(self) -> list[Site]:
        return []

    @property
    def mode(self) -> str | None:
        return None

    @property
    def keeps_relaxation(self) -> bool:
        return False

    def param_groups(self) -> Any:
        return self.model.parameters()

    def gamma_budget_problem(self, optimizer: torch.optim.Optimizer, total_steps: int) -> str | None:
        return None

    def before_step(self, step: int) -> None:
        pass

    def regularize(self) -> tuple[torch.Tensor | float, dict[str, float]]:
        return 0.0, {}

    def penalty(self) -> torch.Tensor | None:
        return None

    def after_step(self, step: int) -> None:
        pass

    @contextlib.contextmanager
    def projected(self) -> Iterator[None]:
        yield

    def release(self) -> None:
        pass

    def theta(self) -> float | None:
        return None

    def summary(self) -> dict[str, float]:
        return {}

    def site_stats(self) -> dict[str, dict[str, float]]:
        return {}

    def branch_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_branch_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass
