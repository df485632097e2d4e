"""The regularisers that keep each branch near the space of intertwiners (DESIGN.md §1, Eq. 5 with correct signs).

For a branch ``W`` with detached input rows ``x`` (captured at its site during the forward pass):

- projection norm  ``N = mean_rows ‖W x‖``
- Lie derivative   ``L_k = mean_rows ‖(W dρ_in(A_k) − dρ_out(A_k) W) x‖``   for each Lie-algebra generator ``A_k``
- discrete term    ``D_g = mean_rows ‖(W ρ_in(g) − ρ_out(g) W) x‖``          for each discrete generator ``g``

``loss = task_loss + weight · Σ_sites (N + Σ_k L_k + Σ_g D_g)``. With ``reduce="rss"`` (the official SEGNN code's
form) each term is instead a root of summed squares over all rows, sites and generators at once:
``weight · (sqrt(Σ ‖W x‖²) + sqrt(Σ ‖(W A_k − A'_k W) x‖²) + sqrt(Σ ‖(W E_g − E'_g W) x‖²))``; both have the same
minimiser. Because the inputs are detached, the gradient reaches
the branches only. No product with a dense generator matrix is formed: each representation map is applied entry by
entry from its few non-zero entries per row (:class:`_Structure`), and all terms of all sites that share their
representations come from one batched product, of the rows with the stacked ``[W; W A_k − A'_k W]`` or of ``W`` with
the stacked rows ``[x; A_k x]``, whichever moves less. With ``source="weight"`` the data-free variant uses Frobenius
norms of the same matrices (same minimiser, independent of the batch). ``every=k`` evaluates on every k-th call with
weight ``k · weight``.

Example:
    >>> reg = Regularizer(weight=0.01)
    >>> out = relaxed(x); loss = task(out) + reg(relaxed).total
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from .branches import Branch

if TYPE_CHECKING:
    from .graph import RelaxedModel

#: How the row norms combine: averaged per site and summed over sites, or one root of summed squares per term.
Reduce = Literal["mean", "rss"]

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


#: Entries of a representation matrix below this fraction of its largest are round-off (escnn's cos(π/2) = 6e-17).
_ROUNDOFF = 1e-12
#: Rows of a map with at most this many entries are applied as a gather; denser ones as a matrix product.
_MAX_GATHER = 8


class _Ops:
    """``m`` linear maps ``A_k`` on ``d``-vectors, applied through their sparsity instead of as dense matrices:
    ``(A_k v)[a] = Σ_t coef[k, a, t] · v[src[k, a, t]]``, each row's entries padded with zeros to ``t``.

    Representation matrices are block-diagonal (irreps: at most two entries per row of an so(3) generator, one for
    parity), Kronecker (``I_C ⊗ A`` for Vector Neurons: one per row) or a fibre permutation times a grid permutation
    (one per row), so applying them is a gather of ``m·d·t`` rows. Maps with denser rows (a user's explicit
    matrices) are applied as one matrix product.
    """

    def __init__(self, mats: Sequence[torch.Tensor], like: torch.Tensor) -> None:
        m, d = len(mats), like.shape[-1]
        self.m, self.d = m, d
        entries = [_entries(a) for a in mats]  # one map at a time: no [m, d, d] temporaries (d is 5000 in e3nn nets)
        self.t = max((int(rows.bincount(minlength=d).max()) for rows, _, _ in entries if rows.numel()), default=0)
        self.sparse = self.t <= _MAX_GATHER
        if self.sparse:  # each row's non-zero columns and values, padded with zeros to t
            self.src = torch.zeros(m, d, self.t, dtype=torch.long, device=like.device)
            self.coef = like.new_zeros(m, d, self.t)
            for k, (rows, cols, values) in enumerate(entries):
                first = torch.cumsum(rows.bincount(minlength=d), 0) - rows.bincount(minlength=d)
                slot = torch.arange(rows.numel(), device=like.device) - first[rows]  # entries come row by row
                self.src[k, rows, slot], self.coef[k, rows, slot] = cols, values
        else:
            self.dense = torch.stack(list(mats))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``[g, d, n] -> [g, m, d, n]``: every map on every column of ``v``. Columns, so that each gathered row is
        a contiguous run of ``n`` numbers (one fast ``index_select``)."""
        g, _, n = v.shape
        if not self.sparse:
            return torch.matmul(self.dense.reshape(1, self.m * self.d, self.d), v).view(g, self.m, self.d, n)
        if self.t == 0:
            return v.new_zeros(g, self.m, self.d, n)
        out = None
        for t in range(self.t):  # one entry of every row at a time: no [.., t, ..] intermediate
            part = v.index_select(1, self.src[..., t].flatten()).view(g, self.m, self.d, n)
            coef = self.coef[..., t, None]
            out = part * coef if out is None else out.addcmul_(part, coef)
        assert out is not None
        return out


def _entries(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, columns and values of the entries of ``mat`` above round-off, in row-major order."""
    magnitude = mat.abs()
    keep = magnitude > _ROUNDOFF * magnitude.max() if mat.numel() else magnitude.bool()
    rows, cols = keep.nonzero(as_tuple=True)
    return rows, cols, mat[rows, cols]


class _Structure:
    """The constraint maps of a branch's representations, in the form the regulariser applies them.

    For each of the ``m`` maps (the Lie generators ``A_k``, then the discrete elements ``E_g``) the commutator
    ``C = W A_in − A_out W`` is gathered entry by entry from ``W`` through the few non-zero entries of each row of
    ``A`` (:class:`_Ops`): ``o·i·t`` numbers, never a dense product with a generator. An element is used as
    ``E − I`` where that is sparser (parity: only the odd rows; ``W E − E' W = W (E − I) − (E' − I) W``), else as
    itself (permutations). The data term is then one batched product for all sites of a group: of the rows with
    ``[W | C_1 | ... | C_m]`` (:meth:`stacked`), or, where the weight is larger than the rows, of ``W`` with the
    rows ``[x | A_1 x | ... | A_m x]`` mapped entry by entry, minus ``A'_k (W x)`` (:meth:`on_rows`); then a norm
    per row.
    """

    def __init__(self, branch: Branch) -> None:
        ops_in, ops_out = [*branch.generators_in], [*branch.generators_out]
        for e_in, e_out in zip(branch.elements_in, branch.elements_out):
            d_in, d_out = _minus_identity(e_in), _minus_identity(e_out)
            sparser = _count(d_in) + _count(d_out) < _count(e_in) + _count(e_out)
            ops_in.append(d_in if sparser else e_in)
            ops_out.append(d_out if sparser else e_out)
        self.m = len(ops_in)
        self.key = _rep_key(branch)
        i, o = branch.dim_in, branch.dim_out
        like = branch.weight
        self.cols_in = _Ops([a.T for a in ops_in], like.new_zeros(i))  # A_kᵀ, on the rows of W
        self.rows_out = _Ops(ops_out, like.new_zeros(o))  # A'_k
        self.rows_in = _Ops(ops_in, like.new_zeros(i))  # A_k, on input rows (weights larger than the rows)

    def commutators(self, w: torch.Tensor) -> torch.Tensor:
        """``[g, i, m, o]``: ``(W A_k − A'_k W)ᵀ`` for weights ``[g, o, i]``."""
        w_a = self.cols_in(w.transpose(1, 2).contiguous())  # [g, m, i, o]: (W A_k)ᵀ, rows of Wᵀ mapped by A_kᵀ
        a_w = self.rows_out(w)  # [g, m, o, i]: A'_k W
        return (w_a - a_w.transpose(2, 3)).transpose(1, 2)

    def data(self, w: torch.Tensor, x: torch.Tensor, reduce: Reduce = "mean") -> torch.Tensor:
        """``[g, 1 + m]`` per-row norms ``‖W x‖`` and ``‖(W A_k − A'_k W) x‖`` reduced over the rows (``"mean"``, or
        ``"rss"``: the root of their summed squares), for weights ``[g, o, i]`` and rows ``[g, R, i]``. Where the
        weight is larger than the rows (``R (i + o) < i o``) the maps act on the rows, ``W (A_k x) − A'_k (W x)``,
        else on the weight (:meth:`stacked`): the same numbers, with the smaller tensors moved around."""
        o, i = w.shape[1:]
        if self.m and x.shape[1] * (i + o) < i * o:
            return _over_rows(self.on_rows(w, x), reduce)
        return _over_rows(self.stacked(w, x), reduce)

    def on_rows(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The ``[g, 1 + m, R]`` row norms of :meth:`data`, as ``W [x | A_1 x | ... | A_m x]`` (one product, ``W`` as
        it is) minus ``A'_k (W x)``."""
        g, o, i = w.shape
        r = x.shape[1]
        with torch.no_grad():  # the rows carry no gradient: [x | A_1 x | ... | A_m x] as [g, i, 1 + m, R]
            xt = x.transpose(1, 2).contiguous()  # [g, i, R]: rows as columns
            x_all = torch.empty(g, i, 1 + self.m, r, dtype=x.dtype, device=x.device)
            x_all[:, :, 0] = xt
            x_all[:, :, 1:] = self.rows_in(xt).transpose(1, 2)
        y_all = torch.bmm(w, x_all.view(g, i, (1 + self.m) * r)).view(g, o, 1 + self.m, r)
        y = y_all[:, :, 0].contiguous()  # [g, o, R] = W x
        diff = y_all[:, :, 1:] - self.rows_out(y).transpose(1, 2)  # [g, o, m, R]
        return torch.cat([_col_norm(y.unsqueeze(1), 2), _col_norm(diff, 1)], dim=1)

    def stacked(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The ``[g, 1 + m, R]`` row norms of :meth:`data`, as one batched product of the rows with the stacked
        ``[W | C_1 | ... | C_m]ᵀ``."""
        g, o, i = w.shape
        parts = [w.transpose(1, 2).unsqueeze(2)]
        if self.m:
            parts.append(self.commutators(w))
        stacked = torch.cat(parts, dim=2).view(g, i, (1 + self.m) * o)
        y = torch.bmm(x, stacked).view(g, x.shape[1], 1 + self.m, o)
        return _RowNorm.apply(y).transpose(1, 2)

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        """``[g, 1 + m]`` Frobenius norms ``‖W‖`` and ``‖W A_k − A'_k W‖`` (data-free), for weights ``[g, o, i]``."""
        norms = [w.flatten(1).norm(dim=1, keepdim=True)]
        if self.m:
            norms.append(self.commutators(w).transpose(1, 2).flatten(2).norm(dim=2))
        return torch.cat(norms, dim=1)


class _RowNorm(torch.autograd.Function):
    """``‖v‖`` over the last axis, with the one-pass backward ``v · g / ‖v‖`` (0 where the norm is 0)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor) -> torch.Tensor:
        n = torch.linalg.vector_norm(v, dim=-1)
        ctx.save_for_backward(v, n)
        return n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        v, n = ctx.saved_tensors
        scale = torch.where(n > 0, grad / torch.where(n > 0, n, 1.0), 0.0)
        return v * scale.unsqueeze(-1)


def _over_rows(norms: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """Row norms ``[..., R]`` reduced over the rows: their mean, or the root of their summed squares."""
    return norms.mean(dim=-1) if reduce == "mean" else _root(norms.square().sum(dim=-1))


def _root(sq: torch.Tensor) -> torch.Tensor:
    """``sqrt`` with a zero gradient where the argument is 0 (a branch of zeros)."""
    nonzero = sq > 0
    return torch.where(nonzero, sq.where(nonzero, 1.0).sqrt(), 0.0)


def _count(mat: torch.Tensor) -> int:
    return int(_entries(mat)[0].numel())


def _col_norm(v: torch.Tensor, dim: int) -> torch.Tensor:
    """The norm over the middle axis ``dim`` as the root of a sum of squares (several times faster than
    ``vector_norm`` over a middle axis, forward and backward), with a zero gradient where the norm is 0."""
    return _root((v * v).sum(dim=dim))


def _minus_identity(element: torch.Tensor) -> torch.Tensor:
    return element - torch.eye(element.shape[-1], dtype=element.dtype, device=element.device)


def _rep_key(branch: Branch) -> tuple[Any, ...]:
    """Changes when the branch's representation buffers are replaced (``.to(dtype/device)``)."""
    return tuple(
        (t.dtype, t.device, t.data_ptr())
        for t in (branch.generators_in, branch.elements_in, branch.generators_out, branch.elements_out)
    )


def dense_norms(
    branch: Branch, rows: torch.Tensor | None, source: str = "data", reduce: Reduce = "mean"
) -> torch.Tensor:
    """The dense formula, for tests: ``[1 + K + G]`` norms from the full matrices ``W A_in − A_out W``."""
    w = branch.weight[None]
    lie, disc = constraint_matrices(
        w, branch.generators_in, branch.generators_out, branch.elements_in, branch.elements_out
    )
    stacked = torch.cat([w[:, None], lie, disc], dim=1)[0]  # [n, o, i]
    if source == "weight":
        return stacked.flatten(1).norm(dim=1)
    assert rows is not None
    per_row = torch.einsum("noi,ri->rno", stacked, rows).norm(dim=-1)  # [R, n]
    return per_row.mean(dim=0) if reduce == "mean" else per_row.square().sum(dim=0).sqrt()


def _norms(
    branches: list[Branch],
    rows: list[torch.Tensor] | None,
    source: str,
    structure: _Structure | None = None,
    reduce: Reduce = "mean",
) -> torch.Tensor:
    """``[g, 1 + K + G]`` norms (projection, each generator, each element) for branches that share shape and
    representations, computed batched over the group: one stacked product instead of one per site."""
    if source not in ("data", "weight"):
        raise ValueError(f"source must be 'data' or 'weight', got {source!r}")
    w = torch.stack([b.weight for b in branches])  # [g, o, i]
    structure = structure or _Structure(branches[0])
    if source == "weight":
        return structure.weight(w)
    assert rows is not None
    if len({r.shape[0] for r in rows}) == 1:  # the common case: one batched product for the group
        return structure.data(w, torch.stack(rows), reduce)
    return torch.cat([structure.data(w[i : i + 1], r[None], reduce) for i, r in enumerate(rows)])


@dataclass
class SiteTerms:
    """The regulariser terms of one site (0-dim tensors); ``lie`` and ``discrete`` are summed over generators."""

    projection: torch.Tensor
    lie: torch.Tensor
    discrete: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.projection + self.lie + self.discrete


def site_terms(
    branch: Branch, rows: torch.Tensor | None, source: Literal["data", "weight"] = "data", reduce: Reduce = "mean"
) -> SiteTerms:
    """The three terms for one branch, from input ``rows`` ``[R, dim_in]`` (``source="data"``) or the weight alone;
    over the rows, the mean of the row norms or (``reduce="rss"``) the root of their summed squares."""
    if source == "data" and (rows is None or rows.shape[0] == 0):
        zero = branch.weight.sum() * 0
        return SiteTerms(zero, zero, zero)
    return _terms(_norms([branch], None if rows is None else [rows], source, reduce=reduce)[0], branch)


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
    evaluated: bool = True  # False on the steps an amortised regulariser (every > 1) skips: total is 0
    reduce: Reduce = "mean"  # how sites combine: summed, or ("rss") the root of their summed squares

    @property
    def sites(self) -> dict[str, SiteTerms]:
        """The unweighted terms per site path."""
        return {s.path: _terms(row, s.branch) for sites, norms in self.groups for s, row in zip(sites, norms)}

    def summary(self) -> dict[str, float]:
        """Each term over the sites (unweighted, as the total combines them), as floats (for logging)."""
        return {name: float(value.detach()) for name, value in _combine(self.groups, self.reduce).items()}


def _combine(groups: list[tuple[list[Any], torch.Tensor]], reduce: Reduce) -> dict[str, torch.Tensor]:
    """Each term over all sites of the groups: the sum of the per-site norms, or for ``"rss"`` the root of the sum of
    their squares (per-site norms that are themselves roots of sums over rows)."""
    parts: dict[str, list[torch.Tensor]] = {"projection": [], "lie": [], "discrete": []}
    for sites, norms in groups:
        k = sites[0].branch.generators_in.shape[0]
        for a, b, name in ((0, 1, "projection"), (1, 1 + k, "lie"), (1 + k, norms.shape[1], "discrete")):
            if b > a:
                parts[name].append(norms[:, a:b].sum() if reduce == "mean" else norms[:, a:b].square().sum())
    return {
        name: (torch.stack(values).sum() if reduce == "mean" else _root(torch.stack(values).sum()))
        if values
        else torch.zeros(())
        for name, values in parts.items()
    }


class Regularizer:
    """``weight · Σ_sites (N + Σ L + Σ D)`` over the inputs captured in the last forward pass of a relaxed model.

    Args:
        weight: λ, the regulariser weight (0.01 in the paper).
        projection, lie, discrete: which terms to include.
        source: ``"data"`` (norms of the mapped inputs, per row, averaged) or ``"weight"`` (Frobenius, data-free).
        reduce: ``"mean"`` (each site's term is its mean row norm; the sites' terms are summed) or ``"rss"`` (the
            official SEGNN code's form: each term is the root of the summed squares over all rows and sites).
        rows: at most this many input rows per site are used (a uniform random subset); None uses all.
        every: evaluate on every ``every``-th call only (the first, then every k-th), with weight ``every · weight``
            so that the expected penalty is unchanged; the calls in between cost nothing and return a total of 0.
    """

    def __init__(
        self,
        weight: float = 0.01,
        projection: bool = True,
        lie: bool = True,
        discrete: bool = True,
        source: Literal["data", "weight"] = "data",
        rows: int | None = 256,
        every: int = 1,
        reduce: Reduce = "mean",
    ) -> None:
        if source not in ("data", "weight"):
            raise ValueError(f"source must be 'data' or 'weight', got {source!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (evaluate on every k-th step), got {every!r}")
        if reduce not in ("mean", "rss"):
            raise ValueError(f"reduce must be 'mean' or 'rss', got {reduce!r}")
        self.weight, self.source, self.rows, self.every, self.reduce = weight, source, rows, every, reduce
        self.calls = 0  # calls so far: with every > 1, the calls with calls % every == 0 are evaluated
        self.use = {"projection": projection, "lie": lie, "discrete": discrete}
        self._groups_of: weakref.WeakKeyDictionary[RelaxedModel, list[list[Any]]] = weakref.WeakKeyDictionary()
        self._structures: weakref.WeakKeyDictionary[Branch, _Structure] = weakref.WeakKeyDictionary()

    def __call__(self, relaxed: RelaxedModel) -> Regularization:
        """Evaluate on ``relaxed`` (a :class:`relaxcli.RelaxedModel`) and release the captured inputs."""
        skip = self.calls % self.every != 0
        self.calls += 1
        if skip:
            for site in relaxed.sites:
                site.branch.captured.clear()
            return Regularization(torch.zeros(()), [], evaluated=False, reduce=self.reduce)
        results: list[tuple[list[Any], torch.Tensor]] = []
        for group in self._groups(relaxed):
            rows = None
            if self.source == "data":
                group = [s for s in group if s.branch.captured]  # a site that did not fire has no data term
                rows = [torch.cat([s.branch.rows(x, self.rows) for x in s.branch.captured]) for s in group]
                for s in group:
                    s.branch.captured.clear()
            if not group:
                continue
            structure = self._structure(group[0].branch)
            results.append((group, _norms([s.branch for s in group], rows, self.source, structure, self.reduce)))
        terms = _combine(results, self.reduce)
        total = sum((value for name, value in terms.items() if self.use[name]), torch.zeros(()))
        return Regularization(self.weight * self.every * total, results, reduce=self.reduce)

    def weight_terms(self, relaxed: RelaxedModel) -> dict[str, SiteTerms]:
        """The data-free (Frobenius) terms of every site, by site path, batched over groups of alike sites like a
        regulariser evaluation (for logs and checkpoints: far cheaper than :func:`site_terms` site by site). Leaves
        the captured inputs and the ``every`` count alone.

        Example:
            >>> terms = Regularizer().weight_terms(relaxed)
            >>> float(terms["layers.0.linear"].lie)
            0.0123
        """
        out: dict[str, SiteTerms] = {}
        for group in self._groups(relaxed):
            norms = _norms([s.branch for s in group], None, "weight", self._structure(group[0].branch))
            out.update({s.path: _terms(n, s.branch) for s, n in zip(group, norms)})
        return out

    def _structure(self, first: Branch) -> _Structure:
        """The structured representation maps of ``first``'s group, built once (again if its reps change)."""
        structure = self._structures.get(first)
        if structure is None or structure.key != _rep_key(first):
            structure = self._structures[first] = _Structure(first)
        return structure

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
