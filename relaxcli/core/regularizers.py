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

import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from .branches import Branch

if TYPE_CHECKING:
    from .graph import RelaxedModel

__all__ = ["constraint_matrices", "site_terms", "SiteTerms", "Regularization", "Regularizer"]


def constraint_matrices(
    weight: torch.Tensor,
    generators_in: torch.Tensor,
    generators_out: torch.Tensor,
    elements_in: torch.Tensor,
    elements_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W G_in − G_out W`` per generator and ``W E_in − E_out W`` per element, for weights ``[..., o, i]``:
    ``[..., K, o, i]`` and ``[..., G, o, i]``."""
    w = weight.unsqueeze(-3)
    lie = w @ generators_in - generators_out @ w
    disc = w @ elements_in - elements_out @ w
    return lie, disc


class _Commutator:
    """``W -> [W A_in - A_out W for A in generators + elements]`` for a stack of weights ``[g, o, i]``.

    The representation matrices are stacked once into ``right = [A_1 | ... | A_m]`` (``[i, m i]``) and
    ``left = [A_1; ...; A_m]`` (``[m o, o]``), held as sparse CSR when mostly zeros: e3nn generators have at most
    ``2l`` entries per row and VN generators two, so the products cost a few multiply-adds per weight instead of
    the ``o·i·(o+i)`` of a dense ``W @ A``. Dense matrices (e.g. a user's explicit representation) stay dense.
    """

    def __init__(self, branch: Branch) -> None:
        a_in = torch.cat([branch.generators_in, branch.elements_in])  # [m, i, i]
        a_out = torch.cat([branch.generators_out, branch.elements_out])  # [m, o, o]
        self.m, i = a_in.shape[0], a_in.shape[1]
        self.key = _rep_key(branch)
        self.right = _maybe_sparse(a_in.permute(1, 0, 2).reshape(i, self.m * i))
        self.left = _maybe_sparse(a_out.reshape(-1, a_out.shape[-1]))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        g, o, i = w.shape
        if self.m == 0:
            return w.new_zeros(g, 0, o, i)
        w_a = (w.reshape(g * o, i) @ self.right).view(g, o, self.m, i).transpose(1, 2)
        a_w = (self.left @ w.transpose(0, 1).reshape(o, g * i)).view(self.m, o, g, i).permute(2, 0, 1, 3)
        return w_a - a_w


def _rep_key(branch: Branch) -> tuple[Any, ...]:
    """Changes when the branch's representation buffers are replaced (``.to(dtype/device)``)."""
    return tuple(
        (t.dtype, t.device, t.data_ptr())
        for t in (branch.generators_in, branch.elements_in, branch.generators_out, branch.elements_out)
    )


def _maybe_sparse(a: torch.Tensor) -> torch.Tensor:
    if a.numel() == 0 or (a != 0).sum() > 0.1 * a.numel():
        return a
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return a.to_sparse_csr()


def _norms(
    branches: list[Branch], rows: list[torch.Tensor] | None, source: str, commutator: _Commutator | None = None
) -> torch.Tensor:
    """``[g, 1 + K + G]`` norms (projection, each generator, each element) for branches that share shape and
    representations, computed batched over the group: one stacked matrix product instead of one per site."""
    w = torch.stack([b.weight for b in branches])  # [g, o, i]
    commutator = commutator or _Commutator(branches[0])
    stacked = torch.cat([w.unsqueeze(1), commutator(w)], dim=1)  # [g, n, o, i]
    g, n, o, i = stacked.shape
    if source == "weight":
        return stacked.flatten(2).norm(dim=2)
    if source != "data":
        raise ValueError(f"source must be 'data' or 'weight', got {source!r}")
    assert rows is not None
    if len({r.shape[0] for r in rows}) == 1:  # the common case: one batched product for the group
        x = torch.stack(rows)  # [g, R, i]
        y = x @ stacked.view(g, n * o, i).transpose(1, 2)  # [g, R, n * o]
        return y.view(g, x.shape[1], n, o).norm(dim=-1).mean(dim=1)
    return torch.stack(
        [(r @ m.view(n * o, i).T).view(r.shape[0], n, o).norm(dim=-1).mean(dim=0) for r, m in zip(rows, stacked)]
    )


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
    if source == "data" and (rows is None or rows.shape[0] == 0):
        zero = branch.weight.sum() * 0
        return SiteTerms(zero, zero, zero)
    return _terms(_norms([branch], None if rows is None else [rows], source)[0], branch)


def _terms(norms: torch.Tensor, branch: Branch) -> SiteTerms:
    k = branch.generators_in.shape[0]
    return SiteTerms(norms[0], norms[1 : 1 + k].sum(), norms[1 + k :].sum())


def _same_group(a: Branch, b: Branch) -> bool:
    return (
        type(a) is type(b)
        and a.weight.shape == b.weight.shape
        and a.rep_names == b.rep_names
        and all(
            torch.equal(getattr(a, n), getattr(b, n))
            for n in ("generators_in", "generators_out", "elements_in", "elements_out")
        )
    )


@dataclass
class Regularization:
    """The result of one regulariser evaluation: the weighted ``total`` and, per group of sites, the norms
    ``[g, 1 + K + G]`` (projection, each Lie generator, each discrete element) they came from."""

    total: torch.Tensor
    groups: list[tuple[list[Any], torch.Tensor]] = field(default_factory=list)

    @property
    def sites(self) -> dict[str, SiteTerms]:
        """The unweighted terms per site path."""
        return {s.path: _terms(row, s.branch) for sites, norms in self.groups for s, row in zip(sites, norms)}

    def summary(self) -> dict[str, float]:
        """Sum of each term over the sites, as floats (for logging)."""
        out = {"projection": 0.0, "lie": 0.0, "discrete": 0.0}
        for sites, norms in self.groups:
            k = sites[0].branch.generators_in.shape[0]
            n = norms.detach()
            out["projection"] += float(n[:, 0].sum())
            out["lie"] += float(n[:, 1 : 1 + k].sum())
            out["discrete"] += float(n[:, 1 + k :].sum())
        return out


class Regularizer:
    """``weight · Σ_sites (N + Σ L + Σ D)`` over the inputs captured in the last forward pass of a relaxed model.

    Args:
        weight: λ, the regulariser weight (0.01 in the paper).
        projection, lie, discrete: which terms to include.
        source: ``"data"`` (norms of the mapped inputs, per row, averaged) or ``"weight"`` (Frobenius, data-free).
        rows: at most this many input rows per site are used (a uniform random subset); None uses all.
    """

    def __init__(
        self,
        weight: float = 0.01,
        projection: bool = True,
        lie: bool = True,
        discrete: bool = True,
        source: Literal["data", "weight"] = "data",
        rows: int | None = 256,
    ) -> None:
        if source not in ("data", "weight"):
            raise ValueError(f"source must be 'data' or 'weight', got {source!r}")
        self.weight, self.source, self.rows = weight, source, rows
        self.use = {"projection": projection, "lie": lie, "discrete": discrete}
        self._groups_of: weakref.WeakKeyDictionary[RelaxedModel, list[list[Any]]] = weakref.WeakKeyDictionary()
        self._commutators: weakref.WeakKeyDictionary[Branch, _Commutator] = weakref.WeakKeyDictionary()

    def __call__(self, relaxed: RelaxedModel) -> Regularization:
        """Evaluate on ``relaxed`` (a :class:`relaxcli.RelaxedModel`) and release the captured inputs."""
        results: list[tuple[list[Any], torch.Tensor]] = []
        parts: list[torch.Tensor] = []
        for group in self._groups(relaxed):
            rows = None
            if self.source == "data":
                group = [s for s in group if s.branch.captured]  # a site that did not fire has no data term
                rows = [torch.cat([s.branch.rows(x, self.rows) for x in s.branch.captured]) for s in group]
                for s in group:
                    s.branch.captured.clear()
            if not group:
                continue
            first = group[0].branch
            commutator = self._commutators.get(first)
            if commutator is None or commutator.key != _rep_key(first):
                commutator = self._commutators[first] = _Commutator(first)
            norms = _norms([s.branch for s in group], rows, self.source, commutator)
            results.append((group, norms))
            k = group[0].branch.generators_in.shape[0]
            columns = [(0, 1, "projection"), (1, 1 + k, "lie"), (1 + k, norms.shape[1], "discrete")]
            parts += [norms[:, a:b].sum() for a, b, name in columns if self.use[name] and b > a]
        total = torch.stack(parts).sum() if parts else torch.zeros(())
        return Regularization(self.weight * total, results)

    def _groups(self, relaxed: RelaxedModel) -> list[list[Any]]:
        """Sites whose branches share shape and representations (computed once per relaxed model)."""
        groups = self._groups_of.get(relaxed)
        if groups is None:
            groups = []
            for site in relaxed.sites:
                for group in groups:
                    if _same_group(group[0].branch, site.branch):
                        group.append(site)
                        break
                else:
                    groups.append([site])
            self._groups_of[relaxed] = groups
        return groups
