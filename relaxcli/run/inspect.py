"""``relax inspect``: how far a model is from equivariance, per relaxed site and as a whole.

For a recipe, a relaxed checkpoint or a projected checkpoint: a table of the sites (path, op, representations, θ,
‖B‖_F, and on validation inputs the projection norm, Lie-derivative norm and discrete-generator norm of each branch)
and the whole-model equivariance error (relative and absolute; float64 transforms; random rotations, plus parity and
translation where the recipe's symmetry has them) of the model as stored and of its projection (θ = 0).

Example:
    >>> report = inspect_path("runs/nbody-20261122-120000/checkpoints/best.safetensors")
    >>> report.equivariance["projected"].relative
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.calls import inference
from ..core.graph import RelaxedModel
from ..core.regularizers import site_terms
from ..core.symmetry import EquivarianceReport, equivariance_error
from ..errors import RelaxError
from ..recipe import Recipe, load_recipe
from .batches import call_model
from .build import build_model, build_relaxed, restore
from .checkpoint import load_checkpoint
from .runlog import SITE_KEYS
from .symmetry import check_options, checked_function, example_inputs, sample_count, symmetry_args

__all__ = ["SiteRow", "InspectReport", "inspect_path", "site_rows"]


@dataclass
class SiteRow:
    path: str
    op: str
    rep_in: str
    rep_out: str
    theta: float
    weight_norm: float
    projection: float
    lie: float
    discrete: float
    calls: int
    schedule: dict[str, float] = field(default_factory=dict)  # a learnt schedule's own numbers (ACE: λ, u)
    layout: str = ""  # the feature layout found at the site's calls, where it is not trivial ("[B, *, 3, C]")


@dataclass
class InspectReport:
    source: str
    kind: str  # "recipe", "relaxed" or "projected"
    model: str
    mode: str | None
    sites: list[SiteRow] = field(default_factory=list)
    equivariance: dict[str, EquivarianceReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst(self) -> float:
        """The relative error of the model as stored (the relaxed model where there is one)."""
        key = "relaxed" if "relaxed" in self.equivariance else "projected"
        return self.equivariance[key].relative if key in self.equivariance else 0.0

    def passes(self, tolerance: float) -> bool:
        """Whether the model as stored is within ``tolerance``: every error finite, and no case left untested."""
        return all(r.finite() and r.tested() > 0 for r in self.equivariance.values()) and self.worst() <= tolerance


def site_rows(relaxed: RelaxedModel, inputs: Any, forward_kwargs: dict[str, Any] | None = None) -> list[SiteRow]:
    """Per-site branch statistics, the data terms measured on ``inputs`` (all rows)."""
    relaxed.eval()

    def run() -> Any:  # afresh on each try: inference retries with gradients for a model that takes them
        for s in relaxed.sites:
            s.calls = 0
            s.branch.captured.clear()
        return call_model(relaxed, inputs, forward_kwargs)

    with relaxed.capturing():
        inference(run)
    with torch.no_grad():
        rows = []
        for s in relaxed.sites:
            b = s.branch
            data = torch.cat([b.rows(x) for x in b.captured]) if b.captured else None
            t = site_terms(b, data, "data")
            b.captured.clear()
            rows.append(
                SiteRow(
                    s.path,
                    s.adapter.name,
                    b.rep_names[0],
                    b.rep_names[1],
                    float(b.theta),
                    float(b.weight.norm()),
                    float(t.projection),
                    float(t.lie),
                    float(t.discrete),
                    s.calls,
                    layout=b.layout,
                )
            )
    return rows


def _learnt_notes(rows: list[SiteRow], kept: float = 0.05) -> list[str]:
    """Which sites a learnt schedule kept relaxed (|γ| above ``kept``)."""
    if not any(r.schedule for r in rows):
        return []
    relaxed = sorted((r for r in rows if abs(r.theta) > kept), key=lambda r: -abs(r.theta))
    if not relaxed:
        return [f"learnt schedule: every |γ| <= {kept}: no site kept a large relaxation"]
    listing = ", ".join(f"{r.path} (γ {r.theta:.3g})" for r in relaxed)
    return [f"learnt schedule: {len(relaxed)} of {len(rows)} sites kept |γ| > {kept}: {listing}"]


def inspect_path(
    path: str | Path,
    *,
    samples: int = 16,
    trials: int = 3,
    trust: bool = False,
    recipe: Recipe | None = None,
    overrides: list[str] | None = None,
) -> InspectReport:
    """Inspect a recipe (``.yaml``/``.yml``, with ``KEY=VALUE`` ``overrides`` as for ``relax train``) or a checkpoint
    (``.safetensors``). A checkpoint's stored recipe may only name allowlisted components unless ``trust``; ``recipe``
    (one the caller holds) replaces it (see :func:`~relaxcli.run.checkpoint.load_checkpoint`).

    Raises:
        RecipeError: ``samples`` or ``trials`` is not a positive integer.
    """
    check_options(trials=trials, samples=samples)
    p = Path(path)
    site_state: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    if overrides and p.suffix not in (".yaml", ".yml"):
        raise RelaxError(
            f"KEY=VALUE overrides apply to a recipe, not to the checkpoint {p}, whose model is what it stores; to "
            "inspect it built from a changed recipe, give that recipe with --recipe"
        )
    if p.suffix in (".yaml", ".yml"):
        recipe = load_recipe(p, overrides or [])
        model = build_model(recipe)
        relaxed = build_relaxed(model, recipe)
        kind = "recipe"
    else:
        ckpt = load_checkpoint(p, trust=trust, recipe=recipe)
        recipe, model, relaxed = restore(ckpt)
        kind = ckpt.kind
        site_state = ckpt.json("site_state") or {}
        if not ckpt.verified:
            notes.append("the file has no content hash (written before relax 0.2), so damage to it cannot be detected")
    report = InspectReport(
        str(p), kind, recipe.model.target, relaxed.mode if relaxed is not None else None, notes=notes
    )
    if relaxed is not None and relaxed.fallback_reason:
        report.notes.append(f"hooks mode: {relaxed.fallback_reason}")
    if relaxed is not None and relaxed.kept_whole:
        report.notes.append(
            f"fx mode: kept whole because they carry hooks (which keep firing): {', '.join(relaxed.kept_whole)}; "
            f"their sites are attached with hooks ({len(relaxed.hooked_sites)})"
        )
    if relaxed is not None:
        report.notes += [f"skipped site {path}: {reason}" for path, reason in relaxed.skipped]
    inputs = example_inputs(recipe, samples)
    if relaxed is not None:
        report.sites = site_rows(relaxed, inputs, recipe.forward.call_kwargs(False))
        for row in report.sites:
            if row.calls != 1:
                report.notes.append(f"site {row.path} fired {row.calls} times in one forward pass")
            stored = site_state.get(row.path, {})
            row.schedule = {k: v for k, v in stored.items() if k not in SITE_KEYS and k != "gamma"}
        report.notes += _learnt_notes(report.sites)
    elif kind == "projected":
        report.notes.append("projected checkpoint: no branches")
    else:
        report.notes.append("relax.enabled is false: the model is trained without branches")
    if recipe.symmetry is None:
        report.notes.append("the recipe has no 'symmetry' section: whole-model equivariance was not measured")
        return report
    args, kw = symmetry_args(recipe, inputs, model)
    model.eval()
    if relaxed is not None:
        thetas = sorted({round(r.theta, 6) for r in report.sites})
        check = checked_function(recipe, relaxed, inputs)
        report.equivariance["relaxed"] = equivariance_error(check, args, ntrials=trials, **kw)
        if thetas == [0.0]:
            report.notes.append("every θ is 0: the relaxed model is its projection")
        with relaxed.projected():
            report.equivariance["projected"] = equivariance_error(check, args, ntrials=trials, **kw)
    else:
        check = checked_function(recipe, model, inputs)
        report.equivariance["projected"] = equivariance_error(check, args, ntrials=trials, **kw)
    for r in report.equivariance.values():
        r.samples = sample_count(inputs)
    return report
