"""``relax.ops``: a user's own equivariant layer classes, registered from the recipe and relaxed end to end through
the real CLI (train -> project -> strict load into the user's class -> e3nn's equivariance test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import e3nn.util.test
import pytest
import safetensors.torch
import torch
import yaml
from e3nn import o3

from relaxcli.errors import RecipeError
from relaxcli.recipe import recipe_from_dict

RELAX = [sys.executable, "-m", "relaxcli"]

# the user's package: two layer kinds relax has never heard of, and a model built from them
USER_LAYERS = textwrap.dedent('''
    import torch
    from e3nn import o3
    from e3nn.nn import Gate
    from torch import nn


    class IrrepsDense(nn.Module):
        """An equivariant linear map on "a x0e + b x1o" features, parametrised per l (not an e3nn module)."""

        def __init__(self, irreps_in, irreps_out):
            super().__init__()
            self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
            count = lambda irreps, l: sum(mul for mul, ir in irreps if ir.l == l)
            self.s_in, self.v_in = count(self.irreps_in, 0), count(self.irreps_in, 1)
            self.s_out, self.v_out = count(self.irreps_out, 0), count(self.irreps_out, 1)
            self.w0 = nn.Parameter(torch.randn(self.s_out, self.s_in) / max(self.s_in, 1) ** 0.5)
            self.w1 = nn.Parameter(torch.randn(self.v_out, self.v_in) / max(self.v_in, 1) ** 0.5)

        def forward(self, x):
            s, v = x[..., : self.s_in], x[..., self.s_in :].unflatten(-1, (self.v_in, 3))
            v = torch.einsum("oc,...ci->...oi", self.w1, v)
            return torch.cat([s @ self.w0.T, v.flatten(-2)], dim=-1)


    class VectorMix(nn.Module):
        """A Vector-Neuron-style channel mixer on [B, C, 3] with its own attribute names."""

        def __init__(self, c_in, c_out):
            super().__init__()
            self.c_in, self.c_out = c_in, c_out
            self.mix = nn.Parameter(torch.randn(c_out, c_in) / c_in ** 0.5)

        def forward(self, v):
            return torch.einsum("oc,bci->boi", self.mix, v)


    class Net(nn.Module):
        """N-body: (pos, vel, charge) of 5 particles -> next positions; E(3)-equivariant."""

        def __init__(self):
            super().__init__()
            self.lin1 = IrrepsDense("1x0e+2x1o", "8x0e+4x1o")
            self.gate = Gate("4x0e", [torch.tanh], "4x0e", [torch.sigmoid], "4x1o")
            self.lin2 = IrrepsDense("4x0e+4x1o", "4x0e+4x1o")
            self.mix = VectorMix(4, 1)

        def forward(self, pos, vel, charge):
            centre = pos.mean(dim=1, keepdim=True)
            h = self.gate(self.lin1(torch.cat([charge, pos - centre, vel], dim=-1)))
            h = self.lin2(h)[..., 4:].unflatten(-1, (4, 3))  # [B, N, 4, 3]
            return pos + self.mix(h.flatten(0, 1)).view_as(pos)
''')

OPS = [
    {"layer": "userlayers.IrrepsDense"},  # irreps_in / irreps_out attributes: the defaults
    {"layer": "userlayers.VectorMix", "action": "vector_neurons", "in_channels": "c_in", "out_channels": "c_out"},
]


def write_recipe(tmp: Path, ops: list) -> Path:
    recipe = {
        "name": "userops",
        "seed": 2,
        "model": {"_component_": "userlayers.Net"},
        "data": {"_component_": "relaxcli.tasks.NBodyData", "train": 40, "val": 20, "test": 20, "seed": 1},
        "optimizer": {"_component_": "torch.optim.Adam", "lr": 3e-3},
        "trainer": {"epochs": 3, "batch_size": 10, "device": "cpu"},
        "symmetry": {"inputs": ["cartesian_points", "1x1o", None], "output": "cartesian_points"},
        "relax": {"theta": {"schedule": "constant"}, "branch": {"init_std": 0.01}, "ops": ops},
    }
    path = tmp / "userops.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELAX_CACHE": str(cwd / "cache")}  # `python -m` puts cwd, with userlayers.py, on the path
    return subprocess.run([*RELAX, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "userlayers.py").write_text(USER_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_recipe_registered_layers_relaxed_end_to_end(user_package: Path) -> None:
    tmp = user_package
    recipe = write_recipe(tmp, OPS)
    proc = run("train", recipe, "--run-dir", "run", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "relaxed 3 sites" in proc.stderr  # lin1, lin2 (IrrepsDense) and mix (VectorMix)
    ckpt = tmp / "run" / "checkpoints" / "best.safetensors"
    report = json.loads(run("inspect", ckpt, "--json", "--trust-recipe", cwd=tmp).stdout)  # the user's own classes
    sites = {s["path"]: s for s in report["sites"]}
    assert sorted(sites) == ["lin1", "lin2", "mix"]
    assert sites["lin1"]["rep_in"].startswith("1x0e+2x1o") and sites["mix"]["rep_out"] == "1x3 (VN)"
    assert report["equivariance"]["relaxed"]["relative"] > 1e-4  # the branches really act

    proc = run("project", ckpt, "-o", "projected.safetensors", "--trust-recipe", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    import userlayers  # the user's class, fresh

    model = userlayers.Net()
    state = safetensors.torch.load_file(tmp / "projected.safetensors")
    model.load_state_dict(state, strict=True)
    trained = {k: v for k, v in state.items() if k.endswith(("w0", "w1", "mix"))}
    assert any(not torch.equal(v, userlayers.Net().state_dict()[k]) for k, v in trained.items())
    e3nn.util.test.assert_equivariant(
        lambda pos, vel, q: model(pos, vel, q),
        irreps_in=["cartesian_points", o3.Irreps("1x1o"), None],
        irreps_out=["cartesian_points"],
        args_in=[torch.randn(4, 5, 3), torch.randn(4, 5, 3), torch.randn(4, 5, 1)],
    )


def test_without_ops_the_user_layers_are_not_found(user_package: Path) -> None:
    proc = run("train", write_recipe(user_package, []), "--run-dir", "run", cwd=user_package)
    assert proc.returncode != 0 and "no equivariant linear op to relax in Net" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "op, key, message",
    [
        ({"layer": "userlayers.Nope"}, "layer", "has no attribute 'Nope'"),
        ({"layer": "userlayers.o3"}, "layer", "is not a torch.nn.Module class"),
        ({"layer": "userlayers.IrrepsDense", "irreps_in": "4x0e+"}, "irreps_in", "neither an attribute name"),
        ({"layer": "userlayers.IrrepsDense", "channel_axis": 2}, "channel_axis", "is not used by action 'irreps'"),
        ({"layer": "userlayers.VectorMix", "action": "vectors"}, "action", "must be one of"),
        ({"irreps_in": "irreps_in"}, "layer", "missing required key"),
    ],
)
def test_bad_ops_are_reported_with_their_key(user_package: Path, op: dict, key: str, message: str) -> None:
    data = yaml.safe_load(write_recipe(user_package, [op]).read_text())
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, "userops.yaml")
    assert f"relax.ops[0].{key}" in str(info.value) or f"relax.ops.0.{key}" in str(info.value), str(info.value)
    assert message in str(info.value)
