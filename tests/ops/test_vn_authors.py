"""User layers as they are written in the wild (issue 18): a VN-PointNet written the way the Vector Neurons authors
write theirs (:mod:`vn_authors`), relaxed with ``relax.ops: [{layer: torch.nn.Linear, action: vector_neurons}]``;
class-object matching of re-exported names; per-site layouts; errors that name the site; axis-aware symmetry specs;
the ``_namespace_`` component key; user hooks in fx mode."""

from __future__ import annotations

import copy
import json
from argparse import Namespace
from pathlib import Path

import pytest
import safetensors.torch
import torch
import vn_authors  # tests/ops/vn_authors.py: pytest puts tests/ops on the path
import yaml
from e3nn import o3
from torch import nn

import relaxcli
from relaxcli.core.branches import LayoutError, VectorBranch
from relaxcli.core.symmetry import equivariance_error, feature_spec, transform
from relaxcli.errors import RecipeError, RelaxError
from relaxcli.ops import ClassAdapter, IrrepsAdapter, VectorNeuronAdapter, register_op, registered_ops
from relaxcli.ops import registry as registry_module
from relaxcli.recipe import instantiate, recipe_from_dict

HERE = Path(__file__).parent
ARGS = {"width": 2, "n_knn": 4, "pooling": "mean"}
POINTS_B3N = {"rep": "cartesian_points", "axis": 1}  # [B, 3, N]
VN_OPS = [{"layer": "torch.nn.Linear", "action": "vector_neurons"}]


def authors_model(pooling: str = "mean", n_knn: int = 4, num_class: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return vn_authors.get_model(Namespace(**{**ARGS, "pooling": pooling, "n_knn": n_knn}), num_class=num_class)


def points(batch: int = 3, n: int = 24) -> torch.Tensor:
    return torch.randn(batch, 3, n, generator=torch.Generator().manual_seed(1))


def linear_adapter(**kwargs: object) -> VectorNeuronAdapter:
    return VectorNeuronAdapter("torch.nn.Linear", **kwargs).resolve()  # type: ignore[arg-type]


# -- matching by class object --------------------------------------------------------------------------------------
def test_public_aliases_match_the_same_modules_as_defining_paths() -> None:
    model = nn.Sequential(nn.Linear(2, 3), o3.Linear("1x1o", "1x1o"), nn.LazyLinear(4), nn.Conv1d(1, 1, 1))
    for alias, defining in [
        ("torch.nn.Linear", "torch.nn.modules.linear.Linear"),
        ("e3nn.o3.Linear", "e3nn.o3._linear.Linear"),
    ]:
        by_alias = [m for m in model if ClassAdapter(alias).resolve().matches(m)]
        by_path = [m for m in model if ClassAdapter(defining).resolve().matches(m)]
        unresolved = [m for m in model if ClassAdapter(alias).matches(m)]  # looked up among imported modules
        assert by_alias == by_path == unresolved and by_alias
    assert ClassAdapter("torch.nn.Linear").matches(model[2])  # LazyLinear subclasses Linear
    assert not ClassAdapter("torch.nn.Linear", subclasses=False).matches(model[2])
    assert IrrepsAdapter("e3nn.o3.Linear").resolve().matches(model[1])


def test_register_op_resolves_the_path_and_refuses_what_does_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", list(registered_ops()))
    adapter = register_op(VectorNeuronAdapter("torch.nn.Linear"))
    assert registered_ops()[0] is adapter and adapter.matches(nn.Linear(2, 3, bias=False))
    assert not adapter.matches(nn.Linear(2, 3))  # a bias breaks rotation equivariance: not a VN map
    with pytest.raises(ValueError, match=r"cannot import the layer class 'torch\.nn\.Nope'"):
        register_op(VectorNeuronAdapter("torch.nn.Nope"))
    with pytest.raises(ValueError, match=r"not a torch\.nn\.Module class"):
        register_op(VectorNeuronAdapter("torch.nn.functional"))


def test_recipe_ops_with_a_public_alias_find_the_modules() -> None:
    data = _recipe()
    for alias in ("torch.nn.Linear", "torch.nn.modules.linear.Linear"):
        data["relax"]["ops"] = [{"layer": alias, "action": "vector_neurons"}]
        recipe = recipe_from_dict(yaml.safe_load(yaml.safe_dump(data)), "vn.yaml")
        from relaxcli.run.build import build_model, build_relaxed

        relaxed = build_relaxed(build_model(recipe), recipe)
        assert relaxed is not None and len(relaxed.sites) == 23


# -- counts, layouts, errors ---------------------------------------------------------------------------------------
def test_every_authors_map_is_a_site_with_the_layout_found_per_call() -> None:
    model = authors_model().double()
    relaxed = relaxcli.relax(model, adapters=[linear_adapter()], init_std=0.0)
    assert len(relaxed.sites) == 23  # fc1-fc3 of the head carry biases: no VN maps, not sites
    assert not any(s.path.startswith("fc") for s in relaxed.sites)
    relaxed.train()
    x = points().double()
    relaxed.dry_run(x)
    layouts = {s.path: s.branch.layout for s in relaxed.sites}
    assert layouts["feat.conv_pos.map_to_feat"] == "[B, *, 3, *, C]"  # the 5-D edge feature, 3 channels
    assert layouts["feat.conv1.map_to_feat"] == "[B, *, 3, C]"
    assert layouts["feat.fstn.fc1.map_to_feat"] == "[B, 3, C]"  # pooled: [B, C, 3] transposed


def test_the_authors_vnlinear_keeps_its_counts_on_an_inner_linear() -> None:
    model = authors_model()
    by_weight = VectorNeuronAdapter(vn_authors.VNLinear).resolve()  # the one 2-D weight's shape
    dotted = VectorNeuronAdapter(
        vn_authors.VNLinear, in_channels="map_to_feat.in_features", out_channels="map_to_feat.out_features"
    )
    layer = model.feat.conv3
    assert by_weight.channels(layer) == dotted.channels(layer) == (4, 8)
    assert VectorNeuronAdapter(vn_authors.VNLinear, in_channels=lambda m: 4, out_channels=8).channels(layer) == (4, 8)
    relaxed = relaxcli.relax(model, adapters=[by_weight], init_std=0.0)
    assert [s.path for s in relaxed.sites] == ["feat.conv3", "feat.fstn.fc3"]
    relaxed.train()
    relaxed.dry_run(points())
    assert relaxed.sites[0].branch.layout == "[B, C, 3, *]"
    with pytest.raises(RelaxError, match=r"site feat\.conv_pos .*map_to_feat\.in_channels.*no attribute"):
        relaxcli.relax(
            model, adapters=[VectorNeuronAdapter(vn_authors.VNLinearLeakyReLU, in_channels="map_to_feat.in_channels")]
        )
    with pytest.raises(RelaxError, match=r"site feat\.conv_pos .*2 2-D weights"):
        relaxcli.relax(model, adapters=[VectorNeuronAdapter(vn_authors.VNLinearLeakyReLU)])


def test_a_layout_mismatch_names_the_site_the_op_the_layout_and_the_shape() -> None:
    model = authors_model()
    relaxed = relaxcli.relax(model, adapters=[linear_adapter(vector_axis=1)])  # wrong for every 4-D/5-D site
    with pytest.raises(RelaxError) as info:
        relaxed(points())
    message = str(info.value)
    assert "site feat.conv_pos.map_to_feat (torch.nn.Linear)" in message
    assert "3-vector on axis 1" in message and "got shape (3, 4, 3, 24, 3)" in message
    # per path: the 3-D sites of the feature transform have the vector on axis 1, the rest on 2
    fixed = relaxcli.relax(
        authors_model(), adapters=[linear_adapter(vector_axis=2, layouts={"feat.fstn.fc*": {"vector_axis": 1}})]
    )
    fixed.train()
    fixed(points())
    assert fixed.branches["feat/fstn/fc1/map_to_feat"].vector_axis == 1


def test_an_ambiguous_vector_axis_is_an_error_asking_for_the_layout() -> None:
    relaxed = relaxcli.relax(authors_model(n_knn=3), adapters=[linear_adapter()])
    relaxed.train()
    with pytest.raises(RelaxError, match=r"site feat\.conv_pos\.map_to_feat .*axes \[1, 2, 3\] all have size 3"):
        relaxed(points(n=3))  # 3 points, k = 3 neighbours: [B, 3, 3, 3, C=3]
    branch = VectorBranch(3, 2, channel_axis=1, vector_axis=None)
    with pytest.raises(LayoutError, match="not the 3 channels"):
        branch.axes((2, 4, 3))


# -- the relaxed authors' model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, pooling, sites", [("fx", "mean", 23), ("hooks", "max", 25)])
def test_zero_branch_is_bit_identical_and_random_branches_break_equivariance(
    mode: str, pooling: str, sites: int
) -> None:
    model = authors_model(pooling).double().train()  # max pooling: VNMaxPool's maps too (and fx cannot trace it)
    x = points().double()
    expected = model(x)
    fused = relaxcli.relax(copy.deepcopy(model), adapters=[linear_adapter()], init_std=0.0, mode=mode)  # type: ignore[arg-type]
    fused.set_theta(1.0)  # op + θW as one product: the same map, a different kernel, so equal to rounding
    torch.testing.assert_close(fused(x), expected, rtol=1e-12, atol=1e-12)
    relaxed = relaxcli.relax(model, adapters=[linear_adapter()], init_std=0.0, mode=mode, fuse=False)  # type: ignore[arg-type]
    assert len(relaxed.sites) == sites and relaxed.mode == mode
    relaxed.set_theta(1.0)
    assert torch.equal(relaxed(x), expected)  # the op, then a zero branch added: bit-identical
    spec = dict(irreps_in=[POINTS_B3N], irreps_out=None, do_parity=False, do_translation=False)
    assert equivariance_error(relaxed, (x,), **spec).relative < 1e-9  # type: ignore[arg-type]
    for b in relaxed.branches.values():
        nn.init.normal_(b.weight, std=0.3)
    assert equivariance_error(relaxed, (x,), **spec).relative > 1e-3  # type: ignore[arg-type]
    with relaxed.projected():
        assert torch.equal(relaxed(x), expected)


# -- symmetry specs with an axis -----------------------------------------------------------------------------------
def test_an_axis_spec_acts_on_that_axis() -> None:
    rotation = o3.rand_matrix(dtype=torch.float64)
    shift = torch.randn(1, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    moved = transform(x, {"points": "cartesian_points", "axis": 1}, rotation, shift)  # the spelling
    assert torch.allclose(moved, transform(x.transpose(1, 2), "cartesian_points", rotation, shift).transpose(1, 2))
    assert feature_spec({"rep": "1x1o", "axis": -2}).axis == -2  # type: ignore[union-attr]
    for bad, message in [
        ({"rep": "1x1o", "axis": "one"}, "axis: expected an integer"),
        ({"rep": "1x1o", "other": "1x1o", "axis": 1}, "holds the representation under 'rep'"),
        ({"rep": "1x1q", "axis": 1}, "not a valid spec"),
    ]:
        with pytest.raises(ValueError, match=message):
            feature_spec(bad)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"rep": "cartesian_points", "axis": 1.5}, "symmetry.inputs[0]: axis: expected an integer"),
        ({"rep": "nonsense", "axis": 1}, "symmetry.inputs[0]: 'nonsense' is not a valid spec"),
        ({"pos": "1x1o"}, "a mapping spec needs 'rep' and 'axis' keys"),
        (7, "symmetry.inputs[0]: expected an e3nn Irreps string"),
    ],
)
def test_recipe_symmetry_axis_specs_are_validated(spec: object, message: str) -> None:
    data = _recipe()
    data["symmetry"]["inputs"] = [spec]
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, "vn.yaml")
    assert message in str(info.value)


def test_recipe_output_axis_spec_is_one_spec_not_specs_keyed_by_name() -> None:
    data = _recipe()
    data["symmetry"]["output"] = {"rep": "1x1o", "axis": 1}
    assert recipe_from_dict(data, "vn.yaml").symmetry.output == {"rep": "1x1o", "axis": 1}  # type: ignore[union-attr]


# -- the namespace component ---------------------------------------------------------------------------------------
def test_namespace_key_passes_a_mapping_as_an_attribute_namespace() -> None:
    recipe = recipe_from_dict(_recipe(), "vn.yaml")
    assert recipe.model.namespaces == ["args"]
    model = instantiate(recipe.model)
    assert isinstance(model.args, Namespace) and model.args.n_knn == 4
    again = recipe_from_dict(recipe.to_dict(), "vn.yaml")  # stored in checkpoints: the key round-trips
    assert again.model.namespaces == ["args"]
    for bad, message in [("argz", "names 'argz', which is not a keyword argument"), ("num_class", "not a mapping")]:
        data = _recipe()
        data["model"]["_namespace_"] = bad
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict(data, "vn.yaml")


# -- user hooks in fx mode -----------------------------------------------------------------------------------------
def test_a_users_hooks_on_a_traced_submodule_keep_firing() -> None:
    model = authors_model().train()
    seen: list[str] = []
    model.feat.register_forward_hook(lambda m, a, out: seen.append("feat"))
    model.feat.fstn.register_forward_pre_hook(lambda m, a: seen.append("fstn"))
    relaxed = relaxcli.relax(model, adapters=[linear_adapter()], init_std=0.1, mode="fx")
    assert relaxed.mode == "fx" and relaxed.kept_whole == ["feat"]  # fstn is inside feat, which is kept whole
    assert len(relaxed.hooked_sites) == 23  # all inside feat: attached with hooks
    relaxed.set_theta(1.0)
    counts = relaxed.dry_run(points())
    assert seen == ["fstn", "feat"] and set(counts.values()) == {1}
    with relaxed.projected():
        base = relaxed(points())
    assert not torch.equal(relaxed(points()), base)  # the branches inside the kept module act
    relaxed.strip()
    assert torch.equal(model(points()), base)


def test_hooks_on_the_model_itself_use_hooks_mode() -> None:
    model = authors_model()
    model.register_forward_hook(lambda m, a, out: None)
    assert "carries hooks on itself" in str(relaxcli.relax(model, adapters=[linear_adapter()]).fallback_reason)
    with pytest.raises(RelaxError, match="carries hooks on itself"):
        relaxcli.relax(model, adapters=[linear_adapter()], mode="fx")


# -- end to end through the CLI ------------------------------------------------------------------------------------
def test_authors_model_relaxed_projected_and_inspected_through_the_cli(tmp_path: Path, relax_cli) -> None:  # type: ignore[no-untyped-def]
    recipe = tmp_path / "vn.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(), sort_keys=False))
    env = {"PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    proc = relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path, env=env)
    assert "relaxed 23 sites" in proc.stderr, proc.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "best.safetensors"

    proc = relax_cli("inspect", ckpt, "--json", "--trust-recipe", cwd=tmp_path, env=env)
    report = json.loads(proc.stdout)
    sites = {s["path"]: s for s in report["sites"]}
    assert len(sites) == 23 and sites["feat.conv_pos.map_to_feat"]["layout"] == "[B, *, 3, *, C]"
    assert report["equivariance"]["projected"]["relative"] < 1e-9
    assert report["equivariance"]["relaxed"]["relative"] > 1e-6, report["equivariance"]  # the branches act

    relax_cli("project", ckpt, "-o", "projected.safetensors", "--trust-recipe", cwd=tmp_path, env=env)
    state = safetensors.torch.load_file(tmp_path / "projected.safetensors")
    model = authors_model(num_class=8)
    model.load_state_dict(state, strict=True)
    assert set(state) == set(model.state_dict())


def _recipe() -> dict:
    return {
        "name": "vn-authors",
        "seed": 0,
        "model": {"_component_": "vn_authors.get_model", "_namespace_": ["args"], "args": dict(ARGS), "num_class": 8},
        "data": {"_component_": "vn_authors.AuthorsPointClouds", "train": 8, "val": 4, "test": 4, "num_points": 16},
        "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
        "optimizer": {"_component_": "torch.optim.Adam", "lr": 1e-3},
        "trainer": {"epochs": 1, "batch_size": 4, "device": "cpu", "dtype": "float64", "threads": 1},
        # the authors' edge feature holds the points themselves and a cross product: SO(3), no translations
        "symmetry": {"inputs": [dict(POINTS_B3N)], "output": None, "parity": False, "translation": False},
        "relax": {"theta": {"schedule": "constant"}, "branch": {"init_std": 0.01}, "ops": [dict(o) for o in VN_OPS]},
    }
