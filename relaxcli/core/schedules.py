"""θ schedules: how the branch scale moves over training, ending at exactly 0 so the model is its projection.

A :class:`Schedule` is attached to the relaxed model once (``attach`` returns the schedule's own learnable variables,
if any, for the optimiser) and called around every optimiser step: ``before_step`` sets θ, ``penalty`` adds loss
terms of its own (ACE's Lagrangian), ``after_step`` updates its state (ACE's dual ascent).
The hand schedules only set θ:

- ``triangle`` (the paper's): 0 -> θ_max over the first half, back to exactly 0 at the last step;
- ``linear`` and ``cosine``: θ_max -> exactly 0 at the last step;
- ``constant``: θ_max throughout (the projection at the end is then a jump).

``granularity="epoch"`` holds θ constant within an epoch (the last epoch has θ = 0). ``end < 1`` runs the schedule
over that fraction of training and keeps θ = 0 afterwards, i.e. equivariant fine-tuning at the end.

The ACE schedules (Manolache et al., NeurIPS 2025) learn θ instead: each site's θ becomes a parameter γ_i, and dual
variables λ_i drive it to 0 (:class:`Ace`, the equality variant) or hold it within a learnt slack ``|γ_i| <= u_i``
(:class:`AceElastic`, for data whose symmetry is only approximate). Validation and export truncate γ to 0 as usual.

Example:
    >>> s = make_schedule("triangle", total_steps=100, theta_max=1.0)
    >>> s.theta(0), s.theta(49), s.theta(99)
    (0.0, 0.98..., 0.0)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

if TYPE_CHECKING:
    from .graph import RelaxedModel

__all__ = [
    "Schedule",
    "ThetaSchedule",
    "Triangle",
    "Constant",
    "LinearDecay",
    "CosineDecay",
    "Ace",
    "AceElastic",
    "DUALS",
    "SCHEDULES",
    "make_schedule",
]


class Schedule:
    """Drives the branches of a :class:`relaxcli.RelaxedModel` over ``total_steps`` optimiser steps.

    Subclasses override the hooks they need; every hook receives the relaxed model. A schedule is named in a recipe
    by its key in :data:`SCHEDULES`; ``recipe_keys`` lists the keys of the recipe's ``relax.theta`` section it reads
    (:meth:`from_recipe`), and the recipe check reports the others as unused.
    """

    keeps_relaxation = False  # True: the relaxed model itself is a result (ace_elastic), not only its projection
    recipe_keys: ClassVar[tuple[str, ...]] = ()
    lr: float | None = None  # optimiser lr of the schedule's own variables (None: the model's)

    @classmethod
    def from_recipe(cls, options: dict[str, Any], total_steps: int, steps_per_epoch: int) -> Schedule:
        """Build from the recipe's ``relax.theta`` values of :attr:`recipe_keys` (``options``)."""
        return cls(total_steps, **options)

    def __init__(self, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps

    def attach(self, relaxed: RelaxedModel) -> list[torch.Tensor]:
        """Called once, after the model is on its device and before the optimiser is built; returns the schedule's
        own learnable variables (none for hand schedules), which the trainer optimises without weight decay."""
        return []

    def before_step(self, relaxed: RelaxedModel, step: int) -> None:
        """Called before the forward pass of ``step`` (0-based)."""

    def penalty(self, relaxed: RelaxedModel) -> torch.Tensor | None:
        """Extra loss terms of the schedule itself (None for hand schedules)."""
        return None

    def after_step(self, relaxed: RelaxedModel, step: int) -> None:
        """Called after the optimiser step of ``step``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def site_state(self, relaxed: RelaxedModel) -> dict[str, dict[str, float]]:
        """Per site path, the schedule's own learnt numbers to log and plot (ACE: γ, λ, u); none for a hand
        schedule, whose θ is the same at every site."""
        return {}

    def summary(self, relaxed: RelaxedModel) -> dict[str, float]:
        """A few numbers for the progress line: the mean branch scale (``θ``, or ``γ`` for a learnt schedule) and
        the mean of each of the schedule's own per-site numbers."""
        thetas = [float(s.branch.theta.detach()) for s in relaxed.sites]
        out = {"theta": sum(thetas) / max(len(thetas), 1)}
        per_site = list(self.site_state(relaxed).values())
        for key in per_site[0] if per_site else ():
            if key != "gamma":
                out[key] = sum(v[key] for v in per_site) / len(per_site)
        return out


class ThetaSchedule(Schedule):
    """A schedule that sets one θ for all branches from the step number (see the module docstring)."""

    recipe_keys: ClassVar[tuple[str, ...]] = ("max", "granularity", "end")

    @classmethod
    def from_recipe(cls, options: dict[str, Any], total_steps: int, steps_per_epoch: int) -> Schedule:
        return cls(
            total_steps,
            theta_max=options["max"],
            granularity=options["granularity"],
            steps_per_epoch=steps_per_epoch,
            end=options["end"],
        )

    def __init__(
        self,
        total_steps: int,
        theta_max: float = 1.0,
        granularity: Literal["step", "epoch"] = "step",
        steps_per_epoch: int | None = None,
        end: float = 1.0,
    ) -> None:
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

    def before_step(self, relaxed: RelaxedModel, step: int) -> None:
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


#: The dual updates of :class:`Ace` (``relax.theta.dual``).
DUALS = ("ascent", "pi", "augmented")


class Ace(Schedule):
    """ACE, equality variant: a learnable γ_i per site (the site's θ), driven to 0 by a dual variable λ_i.

    The loss gains the Lagrangian term ``Σ_i λ_i γ_i``; after each optimiser step λ is updated from γ (γ after the
    step: alternating updates). λ starts at 0, so λ grows while γ stays away from 0 and pulls it down at a rate set by
    what the task gains from the branch; there is no length or peak to tune. γ is truncated to 0 at validation and
    export (the projection). ``dual`` chooses the dual update:

    - ``ascent`` (ACE's Algorithm 1): ``λ_i <- λ_i + η_d γ_i``. Undamped: where the task barely curves in γ the
      dynamics are an oscillation, γ crosses 0 and swings back (measured in ``benchmarks/README.md``).
    - ``pi`` (νPI, Sohrabi et al., ICML 2024): ``λ_i = λ_I,i + κ_p ξ_i`` with the integral ``λ_I,i <- λ_I,i + η_d
      γ_i`` and ``ξ_i <- ν ξ_i + (1 − ν) γ_i``; the proportional term ``κ_p = damping`` damps the oscillation.
    - ``augmented``: ascent, plus the augmented-Lagrangian term ``(c/2) Σ_i γ_i²`` in the loss, ``c = damping``.

    For this equality constraint ``pi`` (with ν = 0) and ``augmented`` put the same extra ``damping·γ_i`` into γ's
    gradient (pi's from the previous step's γ, and into the logged λ); under Adam a large ``damping`` is needed,
    because Adam rescales γ's gradient. The default, ``pi`` with κ_p = 300, is what measured best on symmetric
    N-body (``benchmarks/README.md``): γ falls without crossing 0 and is below 1e-2 after about 1900 steps at the
    model's lr 1e-3; with ``gamma_lr=0.01, damping=100`` it settles in about 250 steps instead.

    Args:
        total_steps: the length of training (ACE does not use it).
        dual_lr: η_d, the dual ascent step (of the integral, for ``pi``).
        gamma_init: γ_i at the start (1: training starts from the unconstrained model).
        gamma_lr: the optimiser's lr for γ (and u); None: the model's.
        dual: ``pi`` (the default), ``augmented`` or ``ascent`` (ACE's undamped update).
        damping: κ_p for ``pi``, c for ``augmented``; unused by ``ascent``.
        nu: ν, the EMA of the proportional term for ``pi`` (0: plain PI).

    Example:
        >>> ace = Ace(total_steps=1000, dual_lr=0.01, dual="pi", damping=1000.0)
        >>> extra = ace.attach(relaxed)            # the γ_i, for the optimiser
        >>> loss = task + ace.penalty(relaxed); loss.backward(); opt.step(); ace.after_step(relaxed, step)
    """

    recipe_keys: ClassVar[tuple[str, ...]] = ("dual_lr", "gamma_init", "gamma_lr", "dual", "damping", "nu")

    def __init__(
        self,
        total_steps: int,
        dual_lr: float = 0.01,
        gamma_init: float = 1.0,
        gamma_lr: float | None = None,
        dual: str = "pi",
        damping: float = 300.0,
        nu: float = 0.0,
    ) -> None:
        super().__init__(total_steps)
        if dual_lr <= 0:
            raise ValueError(f"dual_lr must be > 0, got {dual_lr}")
        if dual not in DUALS:
            raise ValueError(f"dual must be one of {', '.join(DUALS)}, got {dual!r}")
        if not (damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be a finite number >= 0, got {damping}")
        if not 0.0 <= nu < 1.0:
            raise ValueError(f"nu must be in [0, 1), got {nu}")
        self.dual_lr, self.gamma_init, self.lr = float(dual_lr), float(gamma_init), gamma_lr
        self.dual, self.damping, self.nu = dual, float(damping), float(nu)
        self.paths: list[str] = []
        self.lam = torch.zeros(0)  # λ as used in the Lagrangian (for pi: integral + proportional)
        self.lam_i = torch.zeros(0)  # pi: the integral part
        self.xi = torch.zeros(0)  # pi: the (filtered) constraint of the proportional part

    def attach(self, relaxed: RelaxedModel) -> list[torch.Tensor]:
        self.paths = [s.path for s in relaxed.sites]
        gammas: list[torch.Tensor] = [s.branch.learn_theta(self.gamma_init) for s in relaxed.sites]
        self.lam = torch.zeros(len(gammas), device=gammas[0].device if gammas else None)
        self.lam_i, self.xi = torch.zeros_like(self.lam), torch.zeros_like(self.lam)
        return gammas

    @staticmethod
    def gammas(relaxed: RelaxedModel) -> torch.Tensor:
        return torch.stack([s.branch.theta for s in relaxed.sites])

    def constraint(self, gamma: torch.Tensor) -> torch.Tensor:
        """The constraint value per site; the constraint is ``= 0`` here and ``<= 0`` for the elastic variant."""
        return gamma

    def penalty(self, relaxed: RelaxedModel) -> torch.Tensor:
        value = self.constraint(self.gammas(relaxed))
        out = (self.lam * value).sum()
        if self.dual == "augmented":
            out = out + 0.5 * self.damping * (value**2).sum()
        return out

    def after_step(self, relaxed: RelaxedModel, step: int) -> None:
        with torch.no_grad():
            value = self.constraint(self.gammas(relaxed))
            if self.dual == "pi":
                self.lam_i += self.dual_lr * value
                self.xi = self.nu * self.xi + (1.0 - self.nu) * value
                self.lam = self.lam_i + self.damping * self.xi
            else:
                self.lam += self.dual_lr * value

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam.detach().clone(), "lam_i": self.lam_i.clone(), "xi": self.xi.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam.copy_(state["lam"])
        # a checkpoint from before the damped updates holds λ only (its integral, with no proportional part)
        self.lam_i.copy_(state.get("lam_i", state["lam"]))
        self.xi.copy_(state.get("xi", torch.zeros_like(self.xi)))

    def site_state(self, relaxed: RelaxedModel) -> dict[str, dict[str, float]]:
        gamma, lam = self.gammas(relaxed).detach().tolist(), self.lam.tolist()
        return {p: {"gamma": g, "lambda": m} for p, g, m in zip(self.paths, gamma, lam)}


class AceElastic(Ace):
    """ACE, elastic variant: ``|γ_i| <= u_i`` with a learnable slack ``u_i >= 0`` that costs ``(ρ/2)‖u‖²``.

    The loss gains ``Σ_i λ_i (|γ_i| − u_i) + (ρ/2) Σ_i u_i²``; after each optimiser step u is projected onto
    ``u >= 0`` and ``λ_i <- max(0, λ_i + η_d (|γ_i| − u_i))``. At a solution ``u_i = λ_i / ρ``: on symmetric data γ, u
    and λ go to ~0, while a layer that the data needs to break the symmetry keeps γ_i and a large λ_i. (ACE's
    released code counts the slack twice; this follows the paper's algorithm.)

    Args:
        rho: ρ, the price of slack.
        (the others as for :class:`Ace`)
    """

    keeps_relaxation = True
    recipe_keys = ("dual_lr", "gamma_init", "gamma_lr", "rho")  # plain projected ascent: no damping options

    def __init__(
        self,
        total_steps: int,
        dual_lr: float = 0.01,
        gamma_init: float = 1.0,
        gamma_lr: float | None = None,
        rho: float = 1.0,
    ) -> None:
        super().__init__(total_steps, dual_lr, gamma_init, gamma_lr, dual="ascent")
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        self.rho = float(rho)
        self.u = torch.nn.Parameter(torch.zeros(0))

    def attach(self, relaxed: RelaxedModel) -> list[torch.Tensor]:
        gammas = super().attach(relaxed)
        self.u = torch.nn.Parameter(torch.zeros_like(self.lam))
        return gammas + [self.u]

    def constraint(self, gamma: torch.Tensor) -> torch.Tensor:
        return gamma.abs() - self.u

    def penalty(self, relaxed: RelaxedModel) -> torch.Tensor:
        return super().penalty(relaxed) + 0.5 * self.rho * (self.u**2).sum()

    def after_step(self, relaxed: RelaxedModel, step: int) -> None:
        with torch.no_grad():
            self.u.clamp_(min=0.0)
            self.lam = (self.lam + self.dual_lr * self.constraint(self.gammas(relaxed))).clamp_(min=0.0)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "u": self.u.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.u.copy_(state["u"])

    def site_state(self, relaxed: RelaxedModel) -> dict[str, dict[str, float]]:
        out = super().site_state(relaxed)
        for p, u in zip(self.paths, self.u.tolist()):
            out[p]["u"] = u
        return out


#: The schedules a recipe can name (``relax.theta.schedule``): one entry per schedule class; the first is the
#: default.
SCHEDULES: dict[str, type[Schedule]] = {
    "triangle": Triangle,
    "constant": Constant,
    "linear": LinearDecay,
    "cosine": CosineDecay,
    "ace": Ace,
    "ace_elastic": AceElastic,
}


def make_schedule(name: str, total_steps: int, **kwargs: Any) -> Schedule:
    """Build a schedule by name (``triangle``, ``constant``, ``linear``, ``cosine``, ``ace``, ``ace_elastic``);
    ``kwargs`` go to its class."""
    try:
        cls = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown θ schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
    return cls(total_steps, **kwargs)
