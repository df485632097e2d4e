"""The representations and the regulariser terms, on real e3nn and Vector-Neuron ops."""

import math

import pytest
import torch
from e3nn import o3

import relaxcli
from relaxcli import DenseBranch, Regularizer, Rep, VectorBranch, VNLinear, site_terms
from relaxcli.core.reps import default_dtype
from relaxcli.ops import IrrepsLinearAdapter
from relaxcli.testing import intertwiner_dim, intertwiner_residual

IRREPS = [("4x0e+2x1o+1x1e", "3x0e+2x1o+2x1e"), ("2x0e+1x1o+1x2e", "1x0e+2x1o+1x2e+1x2o"), ("1x1o", "1x1e")]


def dense_matrix(op: torch.nn.Module, dim_in: int) -> torch.Tensor:
    """The matrix of a linear op acting on the last axis, from its action on the basis."""
    with torch.no_grad():
        return op(torch.eye(dim_in, dtype=torch.float64)).T


def linear_and_branch(irreps_in: str, irreps_out: str) -> tuple[o3.Linear, DenseBranch]:
    lin = o3.Linear(irreps_in, irreps_out).double()
    branch = IrrepsLinearAdapter().make_branch(lin, init_std=0.0).double()
    return lin, branch


@pytest.mark.parametrize("irreps_in, irreps_out", IRREPS[:2])
def test_o3_linear_is_in_the_null_space_of_every_constraint(irreps_in: str, irreps_out: str) -> None:
    lin, branch = linear_and_branch(irreps_in, irreps_out)
    torch.nn.init.normal_(lin.weight)
    w = dense_matrix(lin, lin.irreps_in.dim)
    with torch.no_grad():
        branch.weight.copy_(w)
    x = torch.randn(64, lin.irreps_in.dim, dtype=torch.float64)
    terms = site_terms(branch, x, "data")
    scale = float(terms.projection.detach())
    assert scale > 0.1
    assert float(terms.lie.detach()) < 1e-12 * scale
    assert float(terms.discrete.detach()) < 1e-12 * scale
    weight_terms = site_terms(branch, None, "weight")
    assert float(weight_terms.lie.detach()) < 1e-12 and float(weight_terms.discrete.detach()) < 1e-12

    # A random matrix of the same shape violates the constraints clearly.
    with torch.no_grad():
        branch.weight.normal_()
    terms = site_terms(branch, x, "data")
    assert float(terms.lie.detach()) > 0.1 * float(terms.projection.detach())
    assert float(terms.discrete.detach()) > 0.1 * float(terms.projection.detach())


@pytest.mark.parametrize("irreps_in, irreps_out", IRREPS)
def test_joint_null_space_has_dimension_weight_numel(irreps_in: str, irreps_out: str) -> None:
    lin, branch = linear_and_branch(irreps_in, irreps_out)
    rep_in = Rep(branch.dim_in, branch.generators_in, branch.elements_in)
    rep_out = Rep(branch.dim_out, branch.generators_out, branch.elements_out)
    assert intertwiner_dim(rep_in, rep_out) == lin.weight_numel


def test_parity_is_what_separates_1o_from_1e() -> None:
    """A map 1o -> 1e passes every so(3) test and fails parity."""
    lin, branch = linear_and_branch("1x1o", "1x1e")
    assert lin.weight_numel == 0
    with torch.no_grad():
        branch.weight.copy_(torch.eye(3))
    terms = site_terms(branch, torch.randn(32, 3, dtype=torch.float64), "data")
    assert float(terms.lie.detach()) < 1e-12
    assert float(terms.discrete.detach()) > 1.0


def test_generators_match_e3nn_wigner_matrices() -> None:
    """exp(t dρ(A)) must equal D(exp(t A)) on the irreps: the generators are those of e3nn's basis."""
    irreps = o3.Irreps("2x0e+1x1o+1x2e+1x3o")
    rep = Rep.from_irreps(irreps)
    l1 = Rep.from_irreps("1x1o").generators
    t = 0.37
    for k in range(3):
        rot = torch.linalg.matrix_exp(t * l1[k])
        with default_dtype(torch.float64):  # e3nn's Wigner matrices are computed in the default dtype
            expected = irreps.D_from_matrix(rot)
        assert torch.allclose(torch.linalg.matrix_exp(t * rep.generators[k]), expected, atol=1e-10)
        assert not torch.allclose(torch.linalg.matrix_exp(-t * rep.generators[k]), expected, atol=1e-2)
    assert torch.equal(rep.elements[0], irreps.D_from_matrix(-torch.eye(3, dtype=torch.float64)))


def test_vector_neuron_constraints() -> None:
    layer = VNLinear(4, 6).double()
    branch = VectorBranch(4, 6, init_std=0.0).double()
    rep_in, rep_out = Rep.vector_neurons(4), Rep.vector_neurons(6)
    with torch.no_grad():
        branch.weight.copy_(torch.kron(layer.weight, torch.eye(3, dtype=torch.float64)))
    x = torch.randn(2, 4, 3, 50, dtype=torch.float64)
    # The branch on its native layout is the dense matrix on flattened c*3+i rows ...
    assert torch.allclose(branch.product(x), layer(x), atol=1e-12)
    # ... with rows flattened as c*3+i per point.
    out_rows = layer(x).permute(0, 3, 1, 2).reshape(-1, 18)
    assert torch.allclose(branch.rows(x) @ branch.weight.T, out_rows, atol=1e-12)
    terms = site_terms(branch, branch.rows(x), "data")
    assert float(terms.lie.detach()) < 1e-12 * float(terms.projection.detach())
    lie, _ = intertwiner_residual(branch.weight, rep_in, rep_out)
    assert float(lie.detach().max()) < 1e-12
    assert intertwiner_dim(rep_in, rep_out) == layer.weight.numel()
    with torch.no_grad():
        branch.weight.normal_()
    terms = site_terms(branch, branch.rows(x), "data")
    assert float(terms.lie.detach()) > 0.1 * float(terms.projection.detach())


def test_vector_branch_on_other_axes_matches_moving_axes() -> None:
    branch = VectorBranch(3, 5, init_std=1.0, channel_axis=-1, vector_axis=-2).double()
    x = torch.randn(7, 11, 3, 3, dtype=torch.float64)  # [B, N, 3, C]
    expected = (x.transpose(-1, -2).reshape(7, 11, 9) @ branch.weight.T).reshape(7, 11, 5, 3).transpose(-1, -2)
    assert torch.allclose(branch.product(x), expected, atol=1e-12)
    rows = branch.rows(x, max_rows=20)
    assert rows.shape == (20, 9)


def test_regulariser_is_per_row_mean_and_subsamples() -> None:
    lin = o3.Linear("4x0e+2x1o", "4x0e+2x1o")
    relaxed = relaxcli.relax(torch.nn.Sequential(lin), init_std=0.1)
    relaxed.train()
    x = torch.randn(4000, 10)
    relaxed(x)
    full = Regularizer(rows=None)(relaxed)
    relaxed(torch.cat([x, x]))
    doubled = Regularizer(rows=None)(relaxed)
    # per-row averaging: repeating the batch changes nothing
    assert torch.allclose(full.total, doubled.total, rtol=1e-5)
    relaxed(x)
    sub = Regularizer(rows=1000)(relaxed)
    assert abs(float(sub.total.detach()) / float(full.total.detach()) - 1) < 0.15
    # captured inputs are released after use
    assert all(not b.captured for b in relaxed.branches.values())


def test_grouped_regulariser_equals_the_sum_of_per_site_terms() -> None:
    from relaxcli.tasks import SEGNN

    torch.manual_seed(0)
    relaxed = relaxcli.relax(SEGNN("4x0e+4x1o", num_layers=2), init_std=0.1)
    relaxed.set_theta(1.0)
    relaxed.train()
    inputs = (torch.randn(3, 5, 3), torch.randn(3, 5, 3), torch.ones(3, 5, 1))
    for source in ("data", "weight"):
        relaxed(*inputs)
        captured = {s.path: list(s.branch.captured) for s in relaxed.sites}
        reg = Regularizer(weight=0.5, rows=None, source=source)(relaxed)
        expected = 0.0
        for s in relaxed.sites:
            rows = torch.cat([s.branch.rows(x) for x in captured[s.path]])
            terms = site_terms(s.branch, rows, source)
            assert torch.allclose(reg.sites[s.path].lie, terms.lie, rtol=1e-5)
            expected += float(terms.total.detach())
        assert float(reg.total.detach()) == pytest.approx(0.5 * expected, rel=1e-5)
        assert sum(reg.summary().values()) == pytest.approx(expected, rel=1e-5)
    # message1 of both layers (and the other repeated layers) share one batched group
    assert len(Regularizer()._groups(relaxed)) < len(relaxed.sites)
    # the batched data-free terms of every site (logs, checkpoints) equal the per-site ones
    batched = Regularizer().weight_terms(relaxed)
    assert sorted(batched) == sorted(s.path for s in relaxed.sites)
    for s in relaxed.sites:
        one = site_terms(s.branch, None, "weight")
        for name in ("projection", "lie", "discrete"):
            assert float(getattr(batched[s.path], name)) == pytest.approx(float(getattr(one, name)), rel=1e-5)


def test_rss_regulariser_is_the_official_root_of_summed_squares_over_rows_and_sites() -> None:
    """``reduce="rss"``: ``λ (sqrt(Σ ‖W x‖²) + sqrt(Σ ‖(W A_k − A'_k W) x‖²) + sqrt(Σ ‖(W P − P' W) x‖²))``, the sums
    over every row, site and generator at once (the official SEGNN code's form), computed here from dense matrices."""
    from relaxcli.core.regularizers import constraint_matrices
    from relaxcli.tasks import SEGNN

    torch.manual_seed(0)
    with default_dtype(torch.float64):
        relaxed = relaxcli.relax(SEGNN("4x0e+4x1o", num_layers=2), init_std=0.1)
    relaxed.set_theta(1.0)
    relaxed.train()
    inputs = (torch.randn(3, 5, 3).double(), torch.randn(3, 5, 3).double(), torch.ones(3, 5, 1).double())
    relaxed(*inputs)
    captured = {s.path: torch.cat([s.branch.rows(x) for x in s.branch.captured]) for s in relaxed.sites}
    reg = Regularizer(weight=0.5, rows=None, reduce="rss")(relaxed)
    squares = {"projection": 0.0, "lie": 0.0, "discrete": 0.0}
    for s in relaxed.sites:
        b, x = s.branch, captured[s.path]
        w = b.weight.detach()
        lie, disc = constraint_matrices(w, b.generators_in, b.generators_out, b.elements_in, b.elements_out)
        squares["projection"] += float((x @ w.T).square().sum())
        squares["lie"] += float(torch.einsum("koi,ri->rko", lie, x).square().sum())
        squares["discrete"] += float(torch.einsum("goi,ri->rgo", disc, x).square().sum())
    roots = {name: math.sqrt(value) for name, value in squares.items()}
    assert reg.summary() == pytest.approx(roots, rel=1e-12)
    assert float(reg.total.detach()) == pytest.approx(0.5 * sum(roots.values()), rel=1e-12)
    # it grows with the batch (a root of a sum), unlike the mean: repeating the batch multiplies it by sqrt(2)
    relaxed(*(torch.cat([a, a]) for a in inputs))
    doubled = Regularizer(weight=0.5, rows=None, reduce="rss")(relaxed)
    assert float(doubled.total.detach()) == pytest.approx(math.sqrt(2) * float(reg.total.detach()), rel=1e-10)
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'rss', got 'sum'"):
        Regularizer(reduce="sum")  # type: ignore[arg-type]


def _cyclic(n: int, shift: int = 1) -> torch.Tensor:
    return torch.roll(torch.eye(n, dtype=torch.float64), shift, dims=0)


def _grid_like(fields: int, k: int) -> tuple[Rep, Rep]:
    """C4 on regular fields: a patch rep ``ρ_reg(g) ⊗ S(g)`` (a 90° turn of the k x k grid) and pixel ``ρ_reg(g)``."""
    turn = torch.arange(k * k).view(k, k).rot90(1).reshape(-1)
    perm = torch.eye(k * k, dtype=torch.float64)[turn]
    fibre = torch.block_diag(*[_cyclic(4)] * fields)
    return Rep.explicit(elements=torch.kron(fibre, perm)[None]), Rep.explicit(elements=fibre[None])


STRUCTURED = {
    "irreps": (Rep.from_irreps("3x0e+2x1o+1x2e+1x0o"), Rep.from_irreps("2x0e+1x1o+2x2e+1x1e+1x3o")),
    "vector-neurons": (Rep.vector_neurons(5), Rep.vector_neurons(4)),
    "grid-like": _grid_like(2, 3),
    "dense-explicit": (Rep.explicit(torch.randn(2, 12, 12)), Rep.explicit(torch.randn(2, 3, 3))),
}


@pytest.mark.parametrize("family", list(STRUCTURED))
def test_structured_regulariser_equals_the_dense_formula(family: str) -> None:
    """Values and gradients of both sources agree with ``‖(W A_in − A_out W) x‖`` on the dense matrices."""
    from relaxcli.core.regularizers import _norms, _Structure, dense_norms

    rep_in, rep_out = STRUCTURED[family]
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        branches = [
            DenseBranch(rep_in.dim, rep_out.dim, init_std=1.0, rep_in=rep_in, rep_out=rep_out) for _ in range(3)
        ]
    rows = [torch.randn(40, rep_in.dim, dtype=torch.float64) for _ in branches]
    structure = _Structure(branches[0])
    assert structure.cols_in.sparse == (family != "dense-explicit")
    for source, reduce in (("data", "mean"), ("data", "rss"), ("weight", "mean")):
        got = _norms(branches, rows, source, structure, reduce)
        expected = torch.stack([dense_norms(b, r, source, reduce) for b, r in zip(branches, rows)])
        assert got.shape == (3, 1 + rep_in.num_generators + rep_in.num_elements)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
        probe = torch.rand_like(expected)
        for b in branches:
            g_got = torch.autograd.grad((got * probe).sum(), b.weight, retain_graph=True)[0]
            g_exp = torch.autograd.grad((expected * probe).sum(), b.weight, retain_graph=True)[0]
            assert torch.allclose(g_got, g_exp, rtol=1e-12, atol=1e-12)
    # both placements of the maps (on the weight, on the rows) give the dense formula's values and gradients
    w, x = torch.stack([b.weight for b in branches]), torch.stack(rows)
    expected = torch.stack([dense_norms(b, r) for b, r in zip(branches, rows)])
    for placed in (structure.stacked(w, x).mean(dim=-1), structure.on_rows(w, x).mean(dim=-1)):
        assert torch.allclose(placed, expected, rtol=1e-12, atol=1e-12)
        g_got = torch.autograd.grad(placed.sum(), branches[2].weight)[0]
        g_exp = torch.autograd.grad(expected.sum(), branches[2].weight, retain_graph=True)[0]
        assert torch.allclose(g_got, g_exp, rtol=1e-12, atol=1e-12)
    # rows of unequal counts take the per-site path, with the same result
    uneven = [rows[0], rows[1][:17], rows[2]]
    got = _norms(branches, uneven, "data", structure)
    assert torch.allclose(got[1], dense_norms(branches[1], uneven[1]), rtol=1e-12, atol=1e-12)


def test_structured_regulariser_gathers_a_few_entries_per_row() -> None:
    """No dense generator product: each map is a gather of at most 2l entries per row (irreps), two (VN), and
    parity is used as ``E − I`` (odd rows only) while a permutation is used as itself (one entry per row)."""
    from relaxcli.core.regularizers import _Structure

    cases = [
        (Rep.from_irreps("4x0e+4x1o+2x2e"), Rep.from_irreps("4x0e+4x1o+2x2e"), 4),
        (Rep.vector_neurons(6), Rep.vector_neurons(2), 1),
        (*_grid_like(2, 3), 1),
    ]
    for rep_in, rep_out, most in cases:
        with default_dtype(torch.float64):
            s = _Structure(DenseBranch(rep_in.dim, rep_out.dim, rep_in=rep_in, rep_out=rep_out))
        assert s.cols_in.sparse and s.rows_out.sparse
        assert s.cols_in.t <= most and s.rows_out.t <= most


def test_regulariser_follows_the_model_to_another_dtype() -> None:
    relaxed = relaxcli.relax(torch.nn.Sequential(o3.Linear("2x0e+2x1o", "2x0e+2x1o")), init_std=0.1)
    relaxed.train()
    reg = Regularizer(rows=None)
    relaxed(torch.randn(7, 8))
    single = reg(relaxed).total
    relaxed.double()
    relaxed(torch.randn(7, 8, dtype=torch.float64))
    double = reg(relaxed).total  # the cached sparse matrices are rebuilt for float64
    assert single.dtype == torch.float32 and double.dtype == torch.float64


def test_amortised_regulariser_evaluates_every_kth_step_with_k_times_the_weight() -> None:
    relaxed = relaxcli.relax(torch.nn.Sequential(o3.Linear("2x0e+2x1o", "2x0e+2x1o")), init_std=0.1)
    relaxed.train()
    x = torch.randn(50, 8)
    relaxed(x)
    every_step = Regularizer(weight=0.01, rows=None)(relaxed).total
    reg = Regularizer(weight=0.01, rows=None, every=3)
    totals = []
    for _ in range(7):
        relaxed(x)
        r = reg(relaxed)
        totals.append((r.evaluated, float(r.total.detach())))
        assert all(not b.captured for b in relaxed.branches.values())  # released on skipped steps too
    assert [e for e, _ in totals] == [True, False, False, True, False, False, True]
    assert totals[0][1] == pytest.approx(3 * float(every_step.detach()), rel=1e-6)
    assert all(t == 0.0 for e, t in totals if not e)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        Regularizer(every=0)
