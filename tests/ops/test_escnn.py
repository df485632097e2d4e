"""escnn steerable convolutions (optional extra): the grid branch, the C4/D4 regulariser, hooks-mode relaxation,
eval-mode checkpoints and whole-model checks over every group element. Skipped where escnn is not installed; CI
runs this file in its own environment (numpy<2, see .ci/run)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

escnn = pytest.importorskip("escnn", reason="escnn is an optional extra (relaxcli[escnn])")

from escnn import gspaces
from escnn import nn as enn

import relaxcli
from relaxcli import RelaxError
from relaxcli.core.regularizers import site_terms
from relaxcli.ops import find_adapter
from relaxcli.ops.steerable import ConvBranch, grid_permutation
from relaxcli.recipe import load_recipe
from relaxcli.run.checkpoint import load_user_state, user_state
from relaxcli.tasks import SteerableCNN
from relaxcli.testing import assert_relaxable, equivariance_error

RECIPES = Path(relaxcli.__file__).parent / "recipes"


def spaces() -> list[tuple[str, object, object, object]]:
    c4, d4 = gspaces.rot2dOnR2(4), gspaces.flipRot2dOnR2(4)
    return [
        (
            "C4",
            c4,
            enn.FieldType(c4, 2 * [c4.trivial_repr] + [c4.regular_repr] + [c4.irrep(1)]),
            enn.FieldType(c4, 2 * [c4.regular_repr] + [c4.irrep(1), c4.trivial_repr]),
        ),
        (
            "D4",
            d4,
            enn.FieldType(d4, [d4.trivial_repr, d4.regular_repr, d4.irrep(1, 1)]),
            enn.FieldType(d4, [d4.regular_repr, d4.irrep(1, 1), d4.irrep(1, 0)]),
        ),
    ]


@pytest.mark.parametrize("name, gs, in_type, out_type", spaces(), ids=["C4", "D4"])
def test_discrete_term_vanishes_on_the_r2conv_filter_and_not_on_a_random_one(name, gs, in_type, out_type) -> None:
    torch.manual_seed(0)
    conv = enn.R2Conv(in_type, out_type, 5, padding=2)
    branch = find_adapter(conv).make_branch(conv, init_std=1.0)
    assert isinstance(branch, ConvBranch) and branch.elements_in.shape[0] == len(gs.fibergroup.generators)
    x = torch.randn(3, in_type.size, 12, 12)
    rows = branch.rows(x, 300)
    random = site_terms(branch, rows, "data")
    filt, _ = conv.expand_parameters()
    with torch.no_grad():
        branch.weight.copy_(filt.reshape(branch.weight.shape))
    own = site_terms(branch, rows, "data")
    # escnn samples its basis in float32: its own filters are equivariant to ~1e-7 relative
    assert float(own.discrete) < 1e-5 * float(own.projection)
    assert float(site_terms(branch, None, "weight").discrete) < 1e-5 * float(filt.norm())
    assert float(random.discrete) > 0.3 * float(random.projection)
    # comparing the spatially rotated filter with itself (ignoring the fibres) is not a valid test for these fields
    assert float((torch.rot90(filt, 1, dims=(-2, -1)) - filt).abs().max()) > 0.1 * float(filt.abs().max())


def test_conv_branch_is_the_convolution_and_its_rows_are_its_patches() -> None:
    torch.manual_seed(0)
    branch = ConvBranch(3, 4, (3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), init_std=1.0)
    x = torch.randn(2, 3, 9, 9)
    y = branch.product(x)
    assert torch.allclose(y, F.conv2d(x, branch.weight.view(4, 3, 3, 3), stride=2, padding=1))
    rows = branch.rows(x)  # every patch: W rows == the convolution's output pixels
    assert rows.shape == (2 * 5 * 5, 27)
    assert torch.allclose(rows @ branch.weight.T, y.permute(0, 2, 3, 1).reshape(-1, 4), atol=1e-6)
    sub = branch.rows(x, 7)  # a random subset is a subset of those patches
    assert sub.shape == (7, 27)
    assert all(bool((rows - r).abs().sum(1).min() < 1e-6) for r in sub)
    circular = ConvBranch(3, 4, (3, 3), padding=(1, 1), padding_mode="circular", init_std=1.0)
    want = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), circular.weight.view(4, 3, 3, 3))
    assert torch.allclose(circular.product(x), want)


def test_grid_permutation_refuses_groups_that_do_not_map_the_grid_to_itself() -> None:
    c8 = gspaces.rot2dOnR2(8)
    with pytest.raises(TypeError, match=r"does not map the 5x5 pixel grid onto itself.*C_1, C_2, C_4, D_1, D_2, D_4"):
        grid_permutation(c8, c8.fibergroup.generators[0], (5, 5))
    so2 = gspaces.rot2dOnR2(-1)
    conv = enn.R2Conv(enn.FieldType(so2, [so2.trivial_repr]), enn.FieldType(so2, [so2.irrep(1)]), 3)
    with pytest.raises(TypeError, match="finite groups"):
        find_adapter(conv).make_branch(conv, 0.0)


def test_relaxed_model_uses_hooks_equals_the_original_with_zero_branches_and_projects_exactly() -> None:
    torch.manual_seed(0)
    model = SteerableCNN(group="D", n=4, channels=2, num_layers=3, kernel_size=3)
    x = torch.randn(2, 1, 8, 8)
    relaxed = relaxcli.relax(copy.deepcopy(model))
    assert relaxed.mode == "hooks" and "torch.fx cannot trace SteerableCNN" in relaxed.fallback_reason
    report = assert_relaxable(model, (x,), [model.in_type], model.out_type, tolerance=1e-5, branch_std=1.0)
    assert report.sites == ["net.0", "net.2", "net.4"] and report.mode == "hooks"
    assert report.relaxed.relative > 1e-2 and len(report.relaxed.cases) == 8  # every element of D4


def test_fused_convolution_equals_the_op_plus_its_branch_in_train_and_eval_mode() -> None:
    torch.manual_seed(1)
    model = SteerableCNN(group="C", n=4, channels=2, num_layers=3, kernel_size=3)
    twin = SteerableCNN(group="C", n=4, channels=2, num_layers=3, kernel_size=3)
    load_user_state(twin, user_state(model))
    x = torch.randn(2, 1, 8, 8)
    fused, separate = relaxcli.relax(model, init_std=0.1), relaxcli.relax(twin, init_std=0.1, fuse=False)
    separate.branches.load_state_dict(fused.branches.state_dict())
    assert all(s.fused for s in fused.sites) and not any(s.fused for s in separate.sites)
    for train in (True, False):  # R2Conv expands its filter in train mode and caches it in eval mode
        outs, grads = [], []
        for relaxed in (fused, separate):
            relaxed.train(train)
            relaxed.set_theta(0.5)
            relaxed.zero_grad()
            out = relaxed(x)
            out.square().sum().backward()
            outs.append(out)
            grads.append([p.grad for p in (*relaxed.module.parameters(), *relaxed.branch_parameters())])
        assert torch.allclose(outs[0], outs[1], atol=1e-5)
        if train:  # eval mode caches the filter outside autograd: only the branches get gradients
            assert all((a - b).abs().max() < 1e-5 * b.abs().max() for a, b in zip(*grads))
    fused.strip()
    assert not any("forward" in s.op.__dict__ for s in fused.sites)


def test_train_project_and_strict_eval_mode_load(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    relax = [sys.executable, "-m", "relaxcli"]
    overrides = [
        "trainer.epochs=2",
        "data.train=16",
        "data.val=8",
        "data.test=8",
        "data.size=12",
        "model.channels=2",
        "trainer.batch_size=8",
        "trainer.device=cpu",
    ]
    proc = subprocess.run(
        [*relax, "train", str(RECIPES / "grid_relaxed.yaml"), *overrides, "--run-dir", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "relaxed 3 sites (3 fused with their op), graph pass: hooks" in proc.stderr and "py3nj" not in proc.stderr
    out = tmp_path / "projected.safetensors"
    proc = subprocess.run(
        [*relax, "project", str(tmp_path / "run" / "checkpoints" / "best.safetensors"), "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import safetensors.torch

    state = safetensors.torch.load_file(out)
    fresh = SteerableCNN(group="C", n=4, channels=2, num_layers=3, kernel_size=5).eval()
    assert set(state) == set(fresh.state_dict())  # the eval-mode keys, expanded filters included
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(3, 1, 12, 12)
    report = equivariance_error(fresh, (x,), [fresh.in_type], fresh.out_type)
    assert report.relative < 1e-5 and len(report.cases) == 4
    # train mode drops escnn's expanded filters; relax loads in eval mode, so either mode of the target works
    trained = SteerableCNN(group="C", n=4, channels=2, num_layers=3, kernel_size=5).train()
    load_user_state(trained, state)
    assert trained.training and torch.allclose(trained(x), fresh(x), atol=1e-6)


def test_symmetry_group_escnn_specs_are_checked(tmp_path: Path) -> None:
    base = (RECIPES / "grid_relaxed.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(base.replace("inputs: [in_type]", "inputs: [1x0e]"))
    with pytest.raises(
        RelaxError,
        match=r"symmetry.inputs\[0\]: '1x0e': with group escnn, give the name of the "
        r"model attribute",
    ):
        load_recipe(bad)
    with pytest.raises(RelaxError, match=r"symmetry.output: 'out_type' is not an Irreps string"):
        load_recipe(RECIPES / "grid_relaxed.yaml", ["symmetry.group=o3"])
    with pytest.raises(RelaxError, match=r"symmetry\.parity: does not apply to group escnn"):
        load_recipe(RECIPES / "grid_relaxed.yaml", ["symmetry.parity=false"])


@pytest.mark.parametrize("name, gs, in_type, out_type", spaces(), ids=["C4", "D4"])
def test_structured_regulariser_equals_the_dense_formula_on_grid_patches(name, gs, in_type, out_type) -> None:
    """Fibre representation times grid permutation, applied entry by entry: the dense formula's values and
    gradients to 1e-12 in float64, for both sources."""
    from relaxcli.core.regularizers import _norms, _Structure, dense_norms
    from relaxcli.core.reps import default_dtype

    torch.manual_seed(0)
    conv = enn.R2Conv(in_type, out_type, 3, padding=1)
    with default_dtype(torch.float64):
        branches = [find_adapter(conv).make_branch(conv, init_std=1.0) for _ in range(2)]
    structure = _Structure(branches[0])
    assert structure.cols_in.sparse and structure.cols_in.t <= 2  # permutations: no dense product
    rows = [b.rows(torch.randn(2, in_type.size, 6, 6, dtype=torch.float64)) for b in branches]
    for source in ("data", "weight"):
        got = _norms(branches, rows, source, structure)
        expected = torch.stack([dense_norms(b, r, source) for b, r in zip(branches, rows)])
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
        probe = torch.rand_like(expected)
        for b in branches:
            g_got = torch.autograd.grad((got * probe).sum(), b.weight, retain_graph=True)[0]
            g_exp = torch.autograd.grad((expected * probe).sum(), b.weight, retain_graph=True)[0]
            assert torch.allclose(g_got, g_exp, rtol=1e-12, atol=1e-12)
    w, x = torch.stack([b.weight for b in branches]), torch.stack(rows)
    expected = torch.stack([dense_norms(b, r) for b, r in zip(branches, rows)])
    for placed in (structure.stacked(w, x).mean(dim=-1), structure.on_rows(w, x).mean(dim=-1)):  # on W, or on x
        assert torch.allclose(placed, expected, rtol=1e-12, atol=1e-12)
