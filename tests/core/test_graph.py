"""The graph pass on real e3nn models: fx and hook modes, parameter sharing, stripping, equivariance."""

import copy
from typing import Literal

import e3nn.util.test
import pytest
import torch
from e3nn import o3

import relaxcli
from relaxcli import RelaxError, VNLinear
from relaxcli.core.reps import default_dtype
from relaxcli.tasks import SEGNN
from relaxcli.testing import assert_equivariant, equivariance_error

SPEC_IN = ["cartesian_points", "1o", None]
SPEC_OUT = "cartesian_points"


def nbody_inputs(batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(batch, 5, 3, generator=g)
    vel = torch.randn(batch, 5, 3, generator=g)
    charges = torch.randint(0, 2, (batch, 5, 1), generator=g).float() * 2 - 1
    return pos, vel, charges


@pytest.fixture()
def segnn() -> SEGNN:
    torch.manual_seed(0)
    return SEGNN("8x0e+8x1o", num_layers=2)


def test_fx_pass_finds_every_weighted_op_and_shares_parameters(segnn: SEGNN) -> None:
    relaxed = relaxcli.relax(segnn)
    assert relaxed.mode == "fx"
    paths = [s.path for s in relaxed.sites]
    assert paths == [
        "embed",
        "layers.0.message1.tp",
        "layers.0.message2.tp",
        "layers.0.update1.tp",
        "layers.0.update2",
        "layers.1.message1.tp",
        "layers.1.message2.tp",
        "layers.1.update1.tp",
        "layers.1.update2",
        "readout1.tp",
        "readout2",
    ]
    assert relaxed.dry_run(*nbody_inputs()) == {p: 1 for p in paths}
    # the relaxed model trains the user's own parameters: same objects, not copies
    user = {id(p) for p in segnn.parameters()}
    assert user <= {id(p) for p in relaxed.parameters()}
    assert list(relaxed.module.state_dict()) == list(SEGNN("8x0e+8x1o", num_layers=2).state_dict())


def test_zero_branch_is_bit_for_bit_the_original(segnn: SEGNN) -> None:
    inputs = nbody_inputs()
    expected = segnn(*inputs)
    relaxed = relaxcli.relax(segnn, init_std=0.0)
    relaxed.set_theta(1.0)
    assert torch.equal(relaxed(*inputs), expected)
    with relaxed.projected():
        torch.nn.init.normal_(relaxed.branches["embed"].weight)
        assert torch.equal(relaxed(*inputs), expected)


def test_random_branch_breaks_equivariance_and_stripping_restores_it(segnn: SEGNN) -> None:
    inputs = nbody_inputs()
    relaxed = relaxcli.relax(segnn, init_std=0.1)
    relaxed.set_theta(1.0)
    broken = equivariance_error(relaxed, inputs, SPEC_IN, SPEC_OUT)
    assert broken.relative > 1e-2

    # train a few steps so the user's weights move away from their initial values
    opt = torch.optim.Adam(relaxed.parameters(), lr=1e-2)
    for _ in range(3):
        loss = relaxed(*inputs).square().mean() + relaxcli.Regularizer()(relaxed).total
        opt.zero_grad()
        loss.backward()
        opt.step()

    model = relaxcli.project(relaxed, inputs=inputs, irreps_in=SPEC_IN, irreps_out=SPEC_OUT, tolerance=1e-5)
    assert model is segnn
    fresh = SEGNN("8x0e+8x1o", num_layers=2)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(fresh(*inputs), segnn(*inputs))
    e3nn.util.test.assert_equivariant(fresh, args_in=list(inputs), irreps_in=SPEC_IN, irreps_out=[SPEC_OUT])
    assert_equivariant(fresh, inputs, SPEC_IN, SPEC_OUT, tolerance=1e-5)


def test_project_refuses_a_model_that_is_not_equivariant(segnn: SEGNN) -> None:
    inputs = nbody_inputs()
    relaxed = relaxcli.relax(segnn)
    with pytest.raises(relaxcli.EquivarianceError, match="not equivariant"):
        # wrong spec: velocities declared as pseudovectors, so the parity check fails
        relaxcli.project(relaxed, inputs=inputs, irreps_in=["cartesian_points", "1e", None], irreps_out=SPEC_OUT)


def test_fx_and_hooks_give_the_same_outputs_and_gradients(segnn: SEGNN) -> None:
    inputs = nbody_inputs()
    twin = copy.deepcopy(segnn)
    fx_model = relaxcli.relax(segnn, mode="fx", init_std=0.05)
    hook_model = relaxcli.relax(twin, mode="hooks")
    assert (fx_model.mode, hook_model.mode) == ("fx", "hooks")
    hook_model.branches.load_state_dict(fx_model.branches.state_dict())
    for m in (fx_model, hook_model):
        m.set_theta(0.7)
        m.train()
    out_fx, out_hooks = fx_model(*inputs), hook_model(*inputs)
    assert torch.allclose(out_fx, out_hooks, atol=1e-6)
    reg = relaxcli.Regularizer(rows=None)
    (out_fx.square().mean() + reg(fx_model).total).backward()
    (out_hooks.square().mean() + reg(hook_model).total).backward()
    grads_fx = dict(fx_model.named_parameters())
    for name, p in hook_model.named_parameters():
        assert p.grad is not None, name
        assert torch.allclose(p.grad, grads_fx[name].grad, atol=1e-6, rtol=1e-4), name
    hook_model.strip()
    assert torch.equal(twin(*inputs), segnn(*inputs))  # hooks removed: the plain user model again


def test_message_branches_run_on_the_nodes_and_equal_the_edge_form() -> None:
    # SEGNN's message op sees cat([h[dst], h[src], e], -1): its branch is computed as (W1 h)[dst] + (W2 h)[src] + W3 e
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = SEGNN("8x0e+8x1o", num_layers=2)
        inputs = tuple(t.double() for t in nbody_inputs())
        twin = copy.deepcopy(model)
        on_nodes = relaxcli.relax(model, init_std=0.1)
        on_edges = relaxcli.relax(twin, init_std=0.1, on_nodes=False)
    assert [s.path for s in on_nodes.sites if s.on_nodes] == ["layers.0.message1.tp", "layers.1.message1.tp"]
    assert not any(s.on_nodes for s in on_edges.sites)
    on_edges.branches.load_state_dict(on_nodes.branches.state_dict())
    reg = relaxcli.Regularizer(rows=None)
    grads = []
    for relaxed in (on_nodes, on_edges):
        relaxed.set_theta(0.7)
        relaxed.train()
        out = relaxed(*inputs)
        (out.square().mean() + reg(relaxed).total).backward()
        grads.append({n: p.grad for n, p in relaxed.named_parameters()})
        with relaxed.projected():
            assert torch.equal(relaxed(*inputs), copy.deepcopy(twin)(*inputs))  # branches off: the user's model
    torch.testing.assert_close(on_nodes(*inputs), on_edges(*inputs), rtol=0, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], rtol=0, atol=1e-12, msg=name)


class EdgeMessages(torch.nn.Module):
    """An EGNN-style layer written another way: ``torch.concat`` on axis 1 of ``index_select``-ed node features."""

    def __init__(self) -> None:
        super().__init__()
        self.message = o3.Linear("4x0e+2x1o+4x0e+2x1o+1x0e", "3x0e+2x1o")
        self.node_update = o3.Linear("4x0e+2x1o+3x0e+2x1o", "4x0e+2x1o")

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index[0], edge_index[1]
        m = self.message(torch.concat([h.index_select(0, src), torch.index_select(h, 0, dst), e], dim=1))
        agg = h.new_zeros(h.shape[0], m.shape[1]).index_add(0, dst, m)
        return self.node_update(torch.cat([h, agg], dim=-1))


def test_a_users_message_layer_runs_on_the_nodes_too() -> None:
    with default_dtype(torch.float64):
        torch.manual_seed(2)
        model = EdgeMessages()
        twin = copy.deepcopy(model)
        on_nodes = relaxcli.relax(model, init_std=0.2)
        on_edges = relaxcli.relax(twin, init_std=0.2, on_nodes=False)
        h, e = torch.randn(7, 10), torch.randn(30, 1)
    edge_index = torch.randint(7, (2, 30))
    assert on_nodes.mode == "fx" and [s.path for s in on_nodes.sites if s.on_nodes] == ["message"]  # not the update
    on_edges.branches.load_state_dict(on_nodes.branches.state_dict())
    outs = []
    for relaxed in (on_nodes, on_edges):
        relaxed.set_theta(1.0)
        outs.append(relaxed(h, edge_index, e))
        outs[-1].square().sum().backward()
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-12)
    for (name, a), (_, b) in zip(on_nodes.branches.named_parameters(), on_edges.branches.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12, msg=name)


class WritesItsNodes(EdgeMessages):
    """Changes the node features (or the message) in place after gathering them: the gathered copies keep the old
    values (or the message no longer is the concatenation)."""

    def __init__(self, nodes: bool) -> None:
        super().__init__()
        self.nodes = nodes

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = h * 1.0
        src, dst = edge_index[0], edge_index[1]
        x = torch.cat([h[src], h[dst], e], dim=-1)
        h.mul_(2.0) if self.nodes else x.mul_(2.0)
        m = self.message(x)
        return self.node_update(torch.cat([h, h.new_zeros(h.shape[0], m.shape[1]).index_add(0, dst, m)], dim=-1))


@pytest.mark.parametrize("nodes", [True, False], ids=["nodes", "message"])
def test_a_message_changed_in_place_stays_on_the_edges(nodes: bool) -> None:
    torch.manual_seed(3)
    model = WritesItsNodes(nodes)
    relaxed = relaxcli.relax(model, init_std=0.3)
    assert relaxed.mode == "fx" and not any(s.on_nodes for s in relaxed.sites)
    relaxed.set_theta(1.0)
    h, e, edge_index = torch.randn(7, 10), torch.randn(30, 1), torch.randint(7, (2, 30))
    hooked = relaxcli.relax(copy.deepcopy(model), mode="hooks")
    hooked.branches.load_state_dict(relaxed.branches.state_dict())
    torch.testing.assert_close(relaxed(h, edge_index, e), hooked(h, edge_index, e))


class NamedLikeDictMethods(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.update = o3.Linear("4x0e+1x1o", "4x0e+1x1o")
        self.keys = o3.Linear("4x0e+1x1o", "4x0e+1x1o")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.keys(self.update(h))


@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_ops_named_like_dict_methods_are_relaxed(mode: Literal["fx", "hooks"]) -> None:
    # ModuleDict has .update and .keys: the branches of top-level ops so named are keyed "update/" and "keys/"
    relaxed = relaxcli.relax(NamedLikeDictMethods(), mode=mode, init_std=0.1)
    assert [s.path for s in relaxed.sites] == ["update", "keys"]
    assert list(relaxed.branches.state_dict()) == ["update/.weight", "update/.theta", "keys/.weight", "keys/.theta"]
    relaxed.set_theta(1.0)
    x = torch.randn(3, 7)
    user = NamedLikeDictMethods()
    user.load_state_dict(relaxed.module.state_dict(), strict=True)
    twin = relaxcli.relax(user, mode=mode)
    twin.branches.load_state_dict(relaxed.branches.state_dict(), strict=True)
    with relaxed.projected():
        plain = relaxed(x)
    assert torch.equal(twin(x), relaxed(x)) and not torch.equal(relaxed(x), plain)


@pytest.mark.parametrize("layout", ["getitem", "index_select", "3d", "one source"])
def test_gathered_branch_equals_the_branch_on_the_concatenation(layout: str) -> None:
    g = torch.Generator().manual_seed(1)
    lead = (3,) if layout == "3d" else ()
    h = torch.randn(6, *lead, 4, generator=g, dtype=torch.float64)
    e = torch.randn(20, *lead, 2, generator=g, dtype=torch.float64)
    dst, src = torch.randint(6, (20,), generator=g), torch.randint(6, (20,), generator=g)
    parts = [(h, dst), (h, src), (e, None)]
    if layout == "index_select":
        x = torch.cat([h.index_select(0, dst), h.index_select(0, src), e], dim=-1)
    elif layout == "one source":
        parts = [(e, None), (h, dst)]
        x = torch.cat([e, h[dst]], dim=-1)
    else:
        x = torch.cat([h[dst], h[src], e], dim=-1)
    branch = relaxcli.DenseBranch(x.shape[-1], 5, init_std=1.0).double()
    branch.theta.fill_(0.3)
    torch.testing.assert_close(branch.gathered(x, parts, -1), branch(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(branch.gathered(x, parts, x.dim() - 1), branch(x), rtol=0, atol=1e-12)


def test_gathered_branch_falls_back_where_the_pieces_do_not_rebuild_the_feature() -> None:
    h, e = torch.randn(6, 4), torch.randn(20, 2)
    dst = torch.randint(6, (20,))
    branch = relaxcli.DenseBranch(6, 3, init_std=1.0)
    x = torch.cat([h[dst], e], dim=-1)
    same = torch.cat([h[dst], e], dim=-1)
    # concatenated along another axis, a boolean mask, or more sources than rows: the branch on x itself
    assert torch.equal(branch.gathered(x, [(h, dst), (e, None)], dim=0), branch(same))
    mask = torch.zeros(6, dtype=torch.bool)
    assert torch.equal(branch.gathered(x, [(h, mask), (e, None)]), branch(same))
    big = torch.randn(50, 4)
    assert torch.equal(branch.gathered(x, [(big, dst), (e, None)]), branch(same))


def test_regulariser_gradients_reach_only_the_branches(segnn: SEGNN) -> None:
    relaxed = relaxcli.relax(segnn, init_std=0.1)
    relaxed.set_theta(1.0)
    relaxed.train()
    relaxed(*nbody_inputs())
    reg = relaxcli.Regularizer()(relaxed)
    reg.total.backward()
    assert all(p.grad is None for p in segnn.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in relaxed.branch_parameters())


class DataDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = o3.Linear("2x0e+1x1o", "2x0e+1x1o")
        self.lin2 = o3.Linear("2x0e+1x1o", "2x0e+1x1o")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin1(x)
        if h.norm() > 1.0:  # data-dependent control flow: fx cannot trace this
            h = self.lin2(h)
        return h


def test_untraceable_model_falls_back_to_hooks_with_a_reason() -> None:
    model = DataDependent()
    with pytest.raises(RelaxError, match="cannot trace DataDependent"):
        relaxcli.relax(model, mode="fx")
    relaxed = relaxcli.relax(model, init_std=0.0)
    assert relaxed.mode == "hooks"
    assert "torch.fx cannot trace DataDependent" in relaxed.fallback_reason
    x = torch.randn(10, 5) * 10
    assert relaxed.dry_run(x) == {"lin1": 1, "lin2": 1}
    assert relaxed.dry_run(x * 1e-3) == {"lin1": 1, "lin2": 0}  # a bypassed site is reported, not missed


class SharedAndUnused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = VNLinear(4, 4)
        self.unused = VNLinear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(torch.relu(self.shared(x)))


def test_dry_run_counts_shared_and_unused_sites() -> None:
    relaxed = relaxcli.relax(SharedAndUnused())
    assert relaxed.mode == "fx"
    assert relaxed.dry_run(torch.randn(2, 4, 3, 8)) == {"shared": 2, "unused": 0}


def test_include_exclude_globs(segnn: SEGNN) -> None:
    relaxed = relaxcli.relax(segnn, include=["layers.*"], exclude=["*.update2"])
    assert [s.path for s in relaxed.sites] == [
        "layers.0.message1.tp",
        "layers.0.message2.tp",
        "layers.0.update1.tp",
        "layers.1.message1.tp",
        "layers.1.message2.tp",
        "layers.1.update1.tp",
    ]
    with pytest.raises(RelaxError, match="no equivariant linear op"):
        relaxcli.relax(segnn, include=["nothing.*"])


def test_float64_model_is_exact_and_dtype_moves_keep_sharing() -> None:
    # e3nn bakes its constants in the default dtype at construction: build float64 models under float64.
    with default_dtype(torch.float64):
        model = SEGNN("8x0e+8x1o", num_layers=2)
    relaxed = relaxcli.relax(model, init_std=0.1)
    assert relaxed.branches["embed"].weight.dtype == torch.float64
    inputs = tuple(t.double() for t in nbody_inputs())
    with relaxed.projected():
        assert_equivariant(relaxed, inputs, SPEC_IN, SPEC_OUT, tolerance=1e-12)
    relaxed.float()  # replaces the e3nn buffers: the graph module must follow
    relaxed.set_theta(0.0)
    inputs = nbody_inputs()
    assert relaxed.branches["embed"].weight.dtype == torch.float32
    assert torch.equal(relaxed(*inputs), model(*inputs))


def test_user_registered_op() -> None:
    class Rotor(torch.nn.Module):
        """An equivariant map on 1o vectors: scaling by a learnt scalar."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * x

    rep = relaxcli.Rep.from_irreps("1x1o")
    adapter = relaxcli.ExplicitAdapter(Rotor, rep_in=rep, rep_out=rep)
    model = torch.nn.Sequential(Rotor(), torch.nn.Tanh(), Rotor())
    relaxed = relaxcli.relax(model, adapters=[adapter])
    assert [s.path for s in relaxed.sites] == ["0", "2"]
    assert relaxed.sites[0].adapter is adapter
