"""The regularisers that keep each branch near the space of intertwiners (DESIGN.md §1, Eq. 5 with correct signs).

For a branch ``W`` with detached input rows ``x`` (captured at its site during the forward pass):

- projection norm  ``N = mean_rows ‖W x‖``
- Lie derivative   ``L_k = mean_rows ‖(W dρ_in(A_k) − dρ_out(A_k) W) x‖``   for each Lie-algebra generator ``A_k``
- discrete term    ``D_g = mean_rows ‖(W ρ_in(g) − ρ_out(g) W) x‖``          for each discrete generator ``g``

``loss = task_loss + weight · Σ_sites (N + Σ_k L_k + Σ_g D_g)``. Because the inputs are detached, the gradient reaches
the branches only. All terms of one site come from a single matmul of the rows with the stacked matrices
``[W; W G_in − G_out W; W E_in − E_out W]``. With ``source="weight"`` the data-free variant uses Frobenius norms of
the same matrices (same minimiser, independent of the batch).

Example:
    >>> reg = Regularizer(weight=0.01)
    >>> out = relaxed(x); loss = task(out) + reg(relaxed).total
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .branches import Branch

__all__ = ["constraint_matrices", "site_terms", "SiteTerms", "Regularization", "Regularizer"]


def constraint_matrices(weight: torch.Tensor, generators_in: torch.Tensor, generators_out: torch.Tensor,
                        elements_in: torch.Tensor, elements_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W G_in − G_out W`` per generator and ``W E_in − E_out W`` per element: ``[K, o, i]`` and ``[G, o, i]``."""
    lie = weight @ generators_in - generators_out @ weight
    disc = weight @ elements_in - elements_out @ weight
    return lie, disc


@dataclass
class SiteTerms:
    """The regulariser terms of one site (0-dim tensors); ``lie`` and ``discrete`` are summed over generators."""

    projection: torch.Tensor
    lie: torch.Tensor
    discrete: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.projection + self.lie + self.discrete


def site_terms(branch: Branch, rows: torch.Tensor | None, source: Literal["data", "weight"] = "data") -> SiteTerms:
    """The three terms for one branch, from input ``rows`` ``[R, dim_in]`` (``source="data"``) or the weight alone."""
    w = branch.weight
    lie, disc = constraint_matrices(w, branch.generators_in, branch.generators_out,
                                    branch.elements_in, branch.elements_out)
    k = lie.shape[0]
    stacked = torch.cat([w[None], lie, disc])  # [1 + K + G, o, i]
    if source == "data":
        if rows is None or rows.shape[0] == 0:
            zero = w.sum() * 0
            return SiteTerms(zero, zero, zero)
        y = rows @ stacked.reshape(-1, w.shape[1]).T  # [R, (1 + K + G) * o]
        norms = y.view(rows.shape[0], -1, w.shape[0]).norm(dim=-1).mean(0)  # [1 + K + G]
    elif source == "weight":
        norms = stacked.flatten(1).norm(dim=1)
    else:
        raise ValueError(f"source must be 'data' or 'weight', got {source!r}")
    return SiteTerms(norms[0], norms[1 : 1 + k].sum(), norms[1 + k :].sum())


@dataclass
class Regularization:
    """The result of one regulariser evaluation: the weighted total and the unweighted terms per site."""

    total: torch.Tensor
    sites: dict[str, SiteTerms] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Sum of each term over the sites, as floats (for logging)."""
        out = {"projection": 0.0, "lie": 0.0, "discrete": 0.0}
        for t in self.sites.values():
            out["projection"] += float(t.projection.detach())
            out["lie"] += float(t.lie.detach())
            out["discrete"] += float(t.discrete.detach())
        return out


class Regularizer:
    """``weight · Σ_sites (N + Σ L + Σ D)`` over the inputs captured in the last forward pass of a relaxed model.

    Args:
        weight: λ, the regulariser weight (0.01 in the paper).
        projection, lie, discrete: which terms to include.
        source: ``"data"`` (norms of the mapped inputs, per row, averaged) or ``"weight"`` (Frobenius, data-free).
        rows: at most this many input rows per site are used (a uniform random subset); None uses all.
    """

    def __init__(self, weight: float = 0.01, projection: bool = True, lie: bool = True, discrete: bool = True,
                 source: Literal["data", "weight"] = "data", rows: int | None = 1024) -> None:
        if source not in ("data", "weight"):
            raise ValueError(f"source must be 'data' or 'weight', got {source!r}")
        self.weight, self.source, self.rows = weight, source, rows
        self.use = {"projection": projection, "lie": lie, "discrete": discrete}

    def __call__(self, relaxed: torch.nn.Module) -> Regularization:
        """Evaluate on ``relaxed`` (a :class:`relaxcli.RelaxedModel`) and release the captured inputs."""
        per_site: dict[str, SiteTerms] = {}
        total: torch.Tensor | None = None
        for site in relaxed.sites:
            b = site.branch
            rows = None
            if self.source == "data" and b.captured:
                rows = torch.cat([b.rows(x, self.rows) for x in b.captured])
            terms = site_terms(b, rows, self.source)
            b.captured.clear()
            per_site[site.path] = terms
            for name, on in self.use.items():
                if on:
                    total = getattr(terms, name) if total is None else total + getattr(terms, name)
        if total is None:
            total = torch.zeros(())
        return Regularization(self.weight * total, per_site)
