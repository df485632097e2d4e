"""A checkpoint is data: reading one never imports or calls anything outside the allowlist unless the user trusts it.

Checkpoints whose stored recipe names ``os.system``, ``subprocess.run``, ``builtins.exec`` or a third-party callable
(whose module creates a marker file when imported) are refused with exit 2 by ``inspect``, ``project``, ``export``,
``train --resume`` and ``relaxcli.load_model``, before anything is imported; a legitimate model of the user's own
(off the allowlist) works with ``--trust-recipe`` / ``trust=True``, or with ``--recipe`` (a recipe the user holds).
A ``.pt2`` file can run code when ``torch.export.load`` reads it, so one named by a file is refused too.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors
import torch
import yaml
from conftest import TINY_SEGNN, nbody_recipe_data, run_relax

import relaxcli
from relaxcli.errors import TrustError
from relaxcli.recipe import recipe_from_dict
from relaxcli.recipe.trust import allowed
from relaxcli.run.checkpoint import save_checkpoint

#: A user's own model class: legitimate, but not on the allowlist.
MY_MODELS = "from relaxcli.tasks import SEGNN\n\n\nclass Net(SEGNN):\n    pass\n"
#: A third-party module that does damage as soon as it is imported, and again when its callable is called.
EVIL_PKG = (
    "import pathlib\npathlib.Path('MARKER').touch()\n\n\ndef make(*args, **kwargs):\n"
    "    pathlib.Path('MARKER').touch()\n"
)
#: (component, keyword arguments): each would create MARKER (in the working directory) if it were ever run.
EVIL = [
    ("os.system", {"command": "touch MARKER"}),
    ("subprocess.run", {"args": ["touch", "MARKER"]}),
    ("builtins.exec", {"source": "open('MARKER', 'w').close()"}),
    ("evilpkg.make", {}),
]
TRUST = "--trust-recipe"


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``mymodels.py`` (the user's model), ``evilpkg.py``, a one-epoch run of ``mymodels.Net`` in
    ``run/``, its projection ``projected.safetensors`` and ``tiny.yaml`` (the same model as relaxcli's SEGNN)."""
    cwd = tmp_path_factory.mktemp("trust")
    (cwd / "mymodels.py").write_text(MY_MODELS)
    (cwd / "evilpkg.py").write_text(EVIL_PKG)
    model = {**TINY_SEGNN, "_component_": "mymodels.Net"}
    mine = nbody_recipe_data("mine", epochs=1, train=20, val=10, test=10, model=model)
    (cwd / "mine.yaml").write_text(yaml.safe_dump(mine, sort_keys=False))
    tiny = nbody_recipe_data("tiny", epochs=1, train=20, val=10, test=10)
    (cwd / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    run_relax("train", "mine.yaml", "--run-dir", "run", cwd=cwd)  # a recipe the user runs is trusted
    run_relax("project", "run/checkpoints/best.safetensors", "-o", "projected.safetensors", TRUST, cwd=cwd)
    return cwd


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118 (not a dict)


def craft(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of checkpoint ``src`` whose stored recipe ``edit`` changed, written as relax writes (a valid hash)."""
    tensors, metadata = _read(src)
    stored = json.loads(metadata["recipe"])
    edit(stored)
    metadata["recipe"] = json.dumps(stored)
    if "model_component" in metadata:
        metadata["model_component"] = stored["model"]["_component_"]
    save_checkpoint(dst, tensors, metadata)
    return dst


def evil_model(target: str, kwargs: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(recipe: dict[str, Any]) -> None:
        recipe["model"] = {"_component_": target, **kwargs}

    return edit


def refused(proc: subprocess.CompletedProcess[str], cwd: Path, *names: str) -> None:
    """Exit 2 with a one-paragraph message naming the components and the ways to trust, and nothing was run."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--trust-recipe" in proc.stderr, proc.stderr
    assert all(name in proc.stderr for name in names), proc.stderr
    assert not (cwd / "MARKER").exists(), "a component named by a file was run"


@pytest.mark.parametrize("target, kwargs", EVIL, ids=[t for t, _ in EVIL])
def test_a_checkpoint_naming_code_is_refused_before_any_import(
    own_run: Path, tmp_path: Path, target: str, kwargs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path
    shutil.copy(own_run / "evilpkg.py", cwd / "evilpkg.py")
    run = cwd / "run"
    shutil.copytree(own_run / "run", run)
    best = craft(run / "checkpoints" / "best.safetensors", cwd / "evil.safetensors", evil_model(target, kwargs))
    projected = craft(own_run / "projected.safetensors", cwd / "evil.projected.safetensors", evil_model(target, kwargs))

    refused(run_relax("inspect", best, cwd=cwd, check=False), cwd, target, "--recipe")
    refused(run_relax("project", best, "-o", "out.safetensors", cwd=cwd, check=False), cwd, target)
    assert not (cwd / "out.safetensors").exists()
    refused(run_relax("export", projected, "-o", "out.pt2", cwd=cwd, check=False), cwd, target)
    assert not (cwd / "out.pt2").exists()

    # --resume reads the run directory's recipe.yaml: a file too
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    evil_model(target, kwargs)(recipe)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    last = run / "checkpoints" / "last.safetensors"
    craft(last, last, evil_model(target, kwargs))
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    refused(run_relax("train", "--resume", run, cwd=cwd, check=False), cwd, target)
    assert {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before

    # relaxcli.load_model: the same refusal, in this process (with evilpkg importable from the working directory)
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    for path in (best, projected):
        with pytest.raises(TrustError, match="--trust-recipe"):
            relaxcli.load_model(path)
    assert "evilpkg" not in sys.modules and not (cwd / "MARKER").exists()


def test_a_recipe_the_user_holds_replaces_the_stored_one(own_run: Path, tmp_path: Path) -> None:
    for name in ("evilpkg.py", "tiny.yaml"):
        shutil.copy(own_run / name, tmp_path / name)
    best = craft(
        own_run / "run" / "checkpoints" / "best.safetensors",
        tmp_path / "evil.safetensors",
        evil_model("evilpkg.make", {}),
    )
    proc = run_relax("inspect", best, "--recipe", "tiny.yaml", "--json", cwd=tmp_path)  # the stored one is not read
    assert json.loads(proc.stdout)["model"] == "relaxcli.tasks.SEGNN"
    proc = run_relax("project", best, "--recipe", "tiny.yaml", "-o", "mine.safetensors", cwd=tmp_path)
    assert "projected model is equivariant" in proc.stdout and (tmp_path / "mine.safetensors").is_file()
    assert not (tmp_path / "MARKER").exists()


def test_every_component_of_a_stored_recipe_is_checked(own_run: Path, tmp_path: Path) -> None:
    shutil.copy(own_run / "evilpkg.py", tmp_path / "evilpkg.py")

    def edit(recipe: dict[str, Any]) -> None:
        recipe["data"] = {"_component_": "evilpkg.make"}
        recipe["loss"] = {"_component_": "builtins.exec", "source": "open('MARKER', 'w')"}
        recipe["optimizer"] = {"_component_": "relaxcli.run.files.atomic_write", "path": "MARKER", "data": "x"}
        recipe["scheduler"] = {"_component_": "torch.optim.optimizer.torch.load", "f": "x.pt"}
        recipe["relax"]["ops"] = [{"layer": "evilpkg.Layer"}]

    best = craft(own_run / "run" / "checkpoints" / "best.safetensors", tmp_path / "evil.safetensors", edit)
    proc = run_relax("inspect", best, cwd=tmp_path, check=False)
    refused(
        proc,
        tmp_path,
        "mymodels.Net",
        "data._component_ = 'evilpkg.make'",
        "builtins.exec",
        "relaxcli.run.files.atomic_write",
        "torch.optim.optimizer.torch.load",
        "relax.ops[0].layer",
    )
    assert "6 components" in proc.stderr and "Nothing was imported" in proc.stderr


def test_the_users_own_model_works_with_the_trust_flag(
    own_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path
    shutil.copy(own_run / "mymodels.py", cwd / "mymodels.py")
    shutil.copytree(own_run / "run", cwd / "run")
    shutil.copy(own_run / "projected.safetensors", cwd / "projected.safetensors")
    best = cwd / "run" / "checkpoints" / "best.safetensors"

    refused(run_relax("inspect", best, cwd=cwd, check=False), cwd, "model._component_ = 'mymodels.Net'")
    report = json.loads(run_relax("inspect", best, "--json", TRUST, cwd=cwd).stdout)
    assert report["model"] == "mymodels.Net" and report["equivariance"]["projected"]["relative"] < 1e-5
    refused(run_relax("export", "projected.safetensors", "-o", "p.pt2", cwd=cwd, check=False), cwd, "mymodels.Net")
    run_relax("export", "projected.safetensors", "-o", "p.pt2", TRUST, cwd=cwd)
    assert (cwd / "p.pt2").is_file()
    refused(run_relax("train", "--resume", "run", cwd=cwd, check=False), cwd, "mymodels.Net")
    proc = run_relax("train", "--resume", "run", TRUST, cwd=cwd)
    assert "resuming" in proc.stderr and "best epoch" in proc.stdout

    monkeypatch.syspath_prepend(str(cwd))
    with pytest.raises(TrustError, match=r"mymodels\.Net"):
        relaxcli.load_model(best)
    kept = relaxcli.load_model(best, trust=True)
    assert (
        type(kept).__name__ == "RelaxedModel"
        and type(relaxcli.load_model(cwd / "projected.safetensors", trust=True)).__name__ == "Net"
    )


def test_a_recipe_of_the_user_must_fit_the_checkpoint(own_run: Path, tmp_path: Path) -> None:
    other = nbody_recipe_data("other", model={**TINY_SEGNN, "hidden_irreps": "8x0e+8x1o"})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    proc = run_relax("inspect", own_run / "projected.safetensors", "--recipe", "other.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "does not fit relaxcli.tasks.SEGNN" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_allowlist_is_explicit() -> None:
    for target in (
        "relaxcli.tasks.SEGNN",
        "relaxcli.models.SEGNN",
        "relaxcli.data.NBodyData",
        "relaxcli.tasks.pointcloud.VNPointNet",
        "relaxcli.ops.vector_neurons.VNLinear",
        "torch.optim.Adam",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.nn.MSELoss",
        "torch.nn.CrossEntropyLoss",
        "e3nn.o3.Linear",
        "e3nn.nn.models.gate_points_2101.Network",
    ):
        assert allowed(target), target
    for target in (
        "os.system",
        "subprocess.run",
        "builtins.exec",
        "builtins.eval",
        "torch.load",
        "torch.nn.Linear",
        "torch.optim.optimizer.torch.load",
        "torch.nn.functional.os.system",
        "relaxcli.run.files.atomic_write",
        "relaxcli.ops.program.load_program",
        "relaxcli.program.load_program",
        "relaxcli.tasks.cache.np.load",
        "e3nn.nn.models.gate_points_2101.torch.load",
        "evilpkg.make",
        "torch.optim._adam.Adam",
        "os",
    ):
        assert not allowed(target), target
    # a recipe the user runs is trusted as usual; only a file's is checked
    data = nbody_recipe_data(model={"_component_": "torch.nn.Identity"})
    assert recipe_from_dict(data).model.target == "torch.nn.Identity"
    with pytest.raises(TrustError, match=r"torch\.nn\.Identity"):
        recipe_from_dict(data, trust=False)


def _crafted_pt2(folder: Path) -> Path:
    """A ``.pt2`` whose sample inputs are a pickle that creates MARKER when unpickled."""

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return os.system, ("touch MARKER",)

    clean, evil = folder / "clean.pt2", folder / "evil.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(3, 2), (torch.randn(4, 3),)), clean)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(
                info,
                pickle.dumps(Payload())
                if info.filename.endswith("sample_inputs/model.pt")
                else src.read(info.filename),
            )
    return evil


def test_a_pt2_named_by_a_file_is_refused(own_run: Path, tmp_path: Path) -> None:
    evil = _crafted_pt2(tmp_path)
    # the finding: torch.export.load (torch 2.13) unpickles the sample inputs, and when the safe (weights_only)
    # load fails it retries with weights_only=False, running the pickle's code
    proc = subprocess.run(
        [sys.executable, "-c", "import torch\ntry:\n    torch.export.load('evil.pt2')\nexcept Exception:\n    pass"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (tmp_path / "MARKER").exists(), (
        f"torch.export.load no longer runs a .pt2's pickle: revisit the .pt2 "
        f"rule in relaxcli.recipe.trust\n{proc.stderr}"
    )
    (tmp_path / "MARKER").unlink()

    # so a .pt2 named by a checkpoint (relaxcli.ops.program.load_program, or its 0.1.0 path) is refused unread
    for target in ("relaxcli.ops.program.load_program", "relaxcli.program.load_program"):
        best = craft(
            own_run / "run" / "checkpoints" / "best.safetensors",
            tmp_path / "pt2.safetensors",
            evil_model(target, {"path": str(evil)}),
        )
        proc = run_relax("inspect", best, cwd=tmp_path, check=False)
        refused(proc, tmp_path, target, "torch.export program (.pt2)")
    assert not (tmp_path / "MARKER").exists()
