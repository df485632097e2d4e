"""θ schedules: how the branch scale moves over training, ending at exactly 0 so the model is its projection.

A :class:`Schedule` is called around every optimiser step: ``before_step`` sets θ (or, for ACE, prepares its learnable
γ), ``penalty`` adds loss terms of its own (ACE's Lagrangian), ``after_step`` updates its state (ACE's dual ascent).
The hand schedules here only set θ:

- ``triangle`` (the paper's): 0 -> θ_max over the first half, back to exactly 0 at the last step;
- ``linear`` and ``cosine``: θ_max -> exactly 0 at the last step;
- ``constant``: θ_max throughout (the projection at the end is then a jump).

``granularity="epoch"`` holds θ constant within an epoch (the last epoch has θ = 0). ``end < 1`` runs the schedule
over that fraction of training and keeps θ = 0 afterwards, i.e. equivariant fine-tuning at the end.

Example:
    >>> s = make_schedule("triangle", total_steps=100, theta_max=1.0)
    >>> s.theta(0), s.theta(49), s.theta(99)
    (0.0, 0.98..., 0.0)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

__all__ = ["Schedule", "ThetaSchedule", "Triangle", "Constant", "LinearDecay", "CosineDecay", "SCHEDULES",
           "make_schedule"]


class Schedule:
    """Drives the branches of a :class:`relaxcli.RelaxedModel` over ``total_steps`` optimiser steps.

    Subclasses override the hooks they need; every hook receives the relaxed model.
    """

    def __init__(self, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps

    def before_step(self, relaxed: torch.nn.Module, step: int) -> None:
        """Called before the forward pass of ``step`` (0-based)."""

    def penalty(self, relaxed: torch.nn.Module) -> torch.Tensor | None:
        """Extra loss terms of the schedule itself (None for hand schedules)."""
        return None

    def after_step(self, relaxed: torch.nn.Module, step: int) -> None:
        """Called after the optimiser step of ``step``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ThetaSchedule(Schedule):
    """A schedule that sets one θ for all branches from the step number (see the module docstring)."""

    def __init__(self, total_steps: int, theta_max: float = 1.0,
                 granularity: Literal["step", "epoch"] = "step", steps_per_epoch: int | None = None,
                 end: float = 1.0) -> None:
        super().__init__(total_steps)
        if granularity not in ("step", "epoch"):
            raise ValueError(f"granularity must be 'step' or 'epoch', got {granularity!r}")
        if granularity == "epoch" and not steps_per_epoch:
            raise ValueError("granularity 'epoch' needs steps_per_epoch")
        if not 0.0 < end <= 1.0:
            raise ValueError(f"end must be in (0, 1], got {end}")
        self.theta_max, self.granularity, self.end = float(theta_max), granularity, float(end)
        self.steps_per_epoch = steps_per_epoch or 1
        units = total_steps if granularity == "step" else math.ceil(total_steps / self.steps_per_epoch)
        self.units = max(1, round(end * units))  # steps (or epochs) over which the schedule runs

    def progress(self, step: int) -> float:
        """Where ``step`` lies in the schedule: 0 at the first unit, 1 at its last unit and after."""
        unit = step if self.granularity == "step" else step // self.steps_per_epoch
        if self.units == 1:
            return 1.0
        return min(1.0, unit / (self.units - 1))

    def shape(self, p: float) -> float:
        """θ / θ_max as a function of progress ``p`` in [0, 1]."""
        raise NotImplementedError

    def theta(self, step: int) -> float:
        return self.theta_max * self.shape(self.progress(step))

    def before_step(self, relaxed: torch.nn.Module, step: int) -> None:
        relaxed.set_theta(self.theta(step))


class Triangle(ThetaSchedule):
    """0 -> θ_max over the first half, back to exactly 0 at the end (the relaxation paper's schedule)."""

    def shape(self, p: float) -> float:
        return 1.0 - abs(2.0 * p - 1.0)


class LinearDecay(ThetaSchedule):
    """θ_max -> 0 linearly."""

    def shape(self, p: float) -> float:
        return 1.0 - p


class CosineDecay(ThetaSchedule):
    """θ_max -> 0 along half a cosine."""

    def shape(self, p: float) -> float:
        return 0.0 if p >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * p))


class Constant(ThetaSchedule):
    """θ_max throughout the schedule's span (and 0 after it when ``end < 1``)."""

    def progress(self, step: int) -> float:
        unit = step if self.granularity == "step" else step // self.steps_per_epoch
        return 0.0 if unit < self.units else 1.0

    def shape(self, p: float) -> float:
        return 1.0 if p < 1.0 else 0.0


SCHEDULES: dict[str, type[ThetaSchedule]] = {
    "triangle": Triangle, "constant": Constant, "linear": LinearDecay, "cosine": CosineDecay,
}


def make_schedule(name: str, total_steps: int, **kwargs: Any) -> Schedule:
    """Build a schedule by name (``triangle``, ``constant``, ``linear``, ``cosine``)."""
    try:
        cls = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown θ schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
    return cls(total_steps, **kwargs)
