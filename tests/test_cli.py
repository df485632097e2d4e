"""End-to-end: the real `relax` process on tiny recipes (train -> project -> inspect, errors, kill -9 and resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import e3nn.util.test
import pytest
import safetensors.torch
import torch
import yaml
from conftest import RELAX, read_json

from relaxcli.run.batches import example_batch
from relaxcli.run.checkpoint import load_checkpoint, save_checkpoint
from relaxcli.tasks import SEGNN, NBodyData


def test_train_project_inspect(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe()
    relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    run_dir = tmp_path / "run"
    for f in (
        "recipe.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "summary.json",
        "plots/loss.png",
        "plots/theta.png",
        "plots/lie.png",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
    ):
        assert (run_dir / f).is_file(), f
    summary = read_json(run_dir / "summary.json")
    assert summary["test_projected"] < 0.27  # better than predicting no motion
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 4 and all(r["val_relaxed"] is not None for r in evals)
    assert min(r["val_projected"] for r in evals) == summary["val_projected"]  # best chosen on projected val

    # the relaxed checkpoint (constant θ = 1) is clearly not equivariant; its projection is
    last = run_dir / "checkpoints" / "last.safetensors"
    report = json.loads(relax_cli("inspect", last, "--json", cwd=tmp_path).stdout)
    assert report["kind"] == "relaxed" and len(report["sites"]) == 7
    assert report["equivariance"]["relaxed"]["relative"] > 1e-3
    assert report["equivariance"]["projected"]["relative"] < 1e-6
    assert relax_cli("inspect", last, "--tolerance", "1e-6", cwd=tmp_path, check=False).returncode == 3

    proc = relax_cli("project", last, "-o", "projected.safetensors", cwd=tmp_path)
    assert "projected model is equivariant" in proc.stdout
    state = safetensors.torch.load_file(tmp_path / "projected.safetensors")
    model = SEGNN(hidden_irreps="4x0e+4x1o", num_layers=1)
    assert sorted(state) == sorted(model.state_dict())  # exactly the user's keys (safetensors sorts them)
    meta = load_checkpoint(tmp_path / "projected.safetensors").metadata
    assert json.loads(meta["state_dict_keys"]) == list(model.state_dict())  # and the order is recorded
    model.load_state_dict(state, strict=True)
    ckpt = load_checkpoint(last)
    assert all(torch.equal(state[k], v) for k, v in ckpt.model_state().items())
    (pos, vel, q), _ = next(
        iter(
            torch.utils.data.DataLoader(
                NBodyData(40, 20, 20, seed=1, cache_dir=str(tmp_path / "cache")).val, batch_size=8
            )
        )
    )
    e3nn.util.test.assert_equivariant(
        model, args_in=[pos, vel, q], irreps_in=["cartesian_points", "1x1o", None], irreps_out=["cartesian_points"]
    )
    proc = relax_cli("inspect", "projected.safetensors", "--tolerance", "1e-6", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout)["equivariance"]["projected"]["relative"] < 1e-6

    # nothing the user had is overwritten
    again = relax_cli("project", last, "-o", "projected.safetensors", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    taken = relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path, check=False)
    assert taken.returncode == 1 and "not empty" in taken.stderr and "--overwrite" in taken.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = relax_cli("train", recipe, "--run-dir", "mine", "--overwrite", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "not a relax run directory" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_project_refuses_a_model_that_fails_the_check(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=1)
    relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    # declare the velocities as pseudovectors: the (correct) model then fails the parity check
    bad = nbody_recipe(name="bad", epochs=1)
    ckpt = tmp_path / "run" / "checkpoints" / "best.safetensors"
    data = load_checkpoint(ckpt)
    recipe_meta = json.loads(data.metadata["recipe"])
    recipe_meta["symmetry"]["inputs"][1] = "1x1e"
    tensors = dict(data.tensors)
    # written through relax's writer, which stores the new content hash (an edited file is otherwise "damaged")
    save_checkpoint(tmp_path / "wrong.safetensors", tensors, {**data.metadata, "recipe": json.dumps(recipe_meta)})
    proc = relax_cli("project", "wrong.safetensors", "-o", "out.safetensors", cwd=tmp_path, check=False)
    assert proc.returncode == 3
    assert "not equivariant" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.safetensors").exists()
    assert bad.exists()


def test_bad_recipe_lists_every_problem(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe()
    text = recipe.read_text().replace("epochs: 4", "epochs: four").replace("schedule: constant", "shedule: constant")
    text = text.replace("torch.optim.Adam", "torch.optim.Adamm")
    recipe.write_text(text)
    proc = relax_cli("train", recipe, "relax.regularizer.weight=-1", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for expected in (
        "trainer.epochs: expected an integer",
        "relax.theta.shedule: unknown key; did you mean 'schedule'?",
        "cannot import torch.optim.Adamm",
        "relax.regularizer.weight",
    ):
        assert expected in proc.stderr, (expected, proc.stderr)
    assert "has 4 problems" in proc.stderr
    debug = relax_cli("train", recipe, "--debug", cwd=tmp_path, check=False)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_clear_errors_for_missing_and_corrupted_inputs(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    proc = relax_cli("train", "nope.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "nope.yaml: file not found" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for command in ("project", "inspect"):
        proc = relax_cli(command, "broken.safetensors", cwd=tmp_path, check=False)
        assert proc.returncode == 1 and "not a readable safetensors checkpoint" in proc.stderr
        assert "Traceback" not in proc.stderr
    proc = relax_cli("inspect", "missing.safetensors", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    recipe = nbody_recipe()
    recipe.write_text(recipe.read_text().replace("relaxcli.tasks.SEGNN", "relaxcli.tasks.SEGNNN"))
    proc = relax_cli("train", recipe, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "cannot import relaxcli.tasks.SEGNNN" in proc.stderr
    assert "did you mean 'SEGNN'" in proc.stderr


def test_print_config_and_dry_run(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe()
    printed = yaml.safe_load(relax_cli("train", recipe, "trainer.epochs=9", "--print-config", cwd=tmp_path).stdout)
    assert printed["trainer"]["epochs"] == 9 and printed["relax"]["regularizer"]["weight"] == 0.01
    proc = relax_cli("train", recipe, "--dry-run", cwd=tmp_path)
    assert "one training step ok" in proc.stdout and "computed on the nodes), graph pass: fx" in proc.stdout
    assert "layers.0.message1.tp" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_recipes_command(tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    listing = relax_cli("recipes", cwd=tmp_path).stdout
    assert "nbody_relaxed" in listing and "nbody_standard" in listing
    relax_cli("recipes", "nbody_relaxed", cwd=tmp_path)
    assert (tmp_path / "nbody_relaxed.yaml").is_file()
    again = relax_cli("recipes", "nbody_relaxed", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


@pytest.mark.parametrize("theta", [{"schedule": "constant"}, {"schedule": "ace_elastic", "dual_lr": 0.05}])
def test_kill_minus_nine_and_resume_gives_the_same_result(
    tmp_path: Path, theta: dict, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=14, train=60, relax={"theta": theta})  # ace_elastic: γ, λ and u resume exactly
    relax_cli("train", recipe, "--run-dir", "straight", cwd=tmp_path)

    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [*RELAX, "train", str(recipe), "--run-dir", "killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed" / "checkpoints" / "last.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                if int(load_checkpoint(last).metadata["epoch"]) >= 3:
                    break
            except Exception:
                pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    relax_cli("train", "--resume", "killed", cwd=tmp_path)

    a = read_json(tmp_path / "straight" / "summary.json")
    b = read_json(tmp_path / "killed" / "summary.json")
    assert a.keys() == b.keys()
    for key in ("val_projected", "test_projected", "test_relaxed", "best_epoch", "steps", "test_relaxed_kept"):
        assert a.get(key) == b.get(key), key
    wa = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.safetensors").tensors
    wb = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.safetensors").tensors
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    lines = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(lines("straight")) == strip(lines("killed"))
    times = [r["time"] for r in lines("killed") if "time" in r]
    assert times == sorted(times)  # the time column goes on after the resume, it does not restart at 0


def test_standard_twin_trains_the_plain_model(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=2, relax={"enabled": False})
    data = yaml.safe_load(recipe.read_text())
    data["seed"] = None  # drawn and recorded
    data["scheduler"] = {"_component_": "torch.optim.lr_scheduler.StepLR", "step_size": 1, "gamma": 0.5}
    data["trainer"]["grad_clip"] = 0.5
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    relax_cli("train", recipe, "--run-dir", "std", cwd=tmp_path)
    summary = read_json(tmp_path / "std" / "summary.json")
    assert summary["relaxed"] is False and summary["test_relaxed"] is None
    recorded = yaml.safe_load((tmp_path / "std" / "recipe.yaml").read_text())
    assert isinstance(recorded["seed"], int) and recorded["seed"] == summary["seed"]
    lrs = {
        r["epoch"]: r["lr"]
        for r in map(json.loads, (tmp_path / "std" / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    }
    assert lrs == {1: pytest.approx(3e-3), 2: pytest.approx(1.5e-3)}  # the lr scheduler steps once per epoch
    ckpt = load_checkpoint(tmp_path / "std" / "checkpoints" / "best.safetensors")
    assert ckpt.branch_state() == {} and sorted(ckpt.model_state()) == sorted(
        SEGNN(hidden_irreps="4x0e+4x1o", num_layers=1).state_dict()
    )
    assert not (tmp_path / "std" / "plots" / "theta.png").exists()


def test_initial_weights_from_the_recipe(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    from relaxcli.recipe import load_recipe
    from relaxcli.run.build import build_model

    torch.manual_seed(5)
    source = SEGNN(hidden_irreps="4x0e+4x1o", num_layers=1)
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "init.safetensors"))
    recipe = nbody_recipe()
    recipe.write_text(
        recipe.read_text().replace(
            "  _component_: relaxcli.tasks.SEGNN", "  _component_: relaxcli.tasks.SEGNN\n  _weights_: init.safetensors"
        )
    )
    model = build_model(load_recipe(recipe))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    safetensors.torch.save_file({"embed.weight": torch.zeros(3)}, str(tmp_path / "init.safetensors"))
    proc = relax_cli("train", recipe, "--dry-run", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "does not match SEGNN: missing keys" in proc.stderr


def test_ace_elastic_keeps_gamma_and_exports_both_models(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=6, relax={"theta": {"schedule": "ace_elastic", "dual_lr": 0.05}})
    data = yaml.safe_load(recipe.read_text())
    data["data"]["field"] = 0.5  # a field along z that the model does not see
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)
    assert "relaxed model with γ kept" in proc.stdout and "relax project --keep-gamma" in proc.stdout
    summary = read_json(tmp_path / "run" / "summary.json")
    kept_ckpt = tmp_path / summary["best_relaxed_checkpoint"]
    assert kept_ckpt.name == "best_relaxed.safetensors" and summary["test_relaxed_kept"] is not None
    evals = [
        r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"
    ]
    first, last = evals[0]["sites"], evals[-1]["sites"]
    assert first.keys() == last.keys() and len(last) == 7  # the sites of a one-layer SEGNN
    for site in last.values():
        assert {"gamma", "lambda", "u"} <= site.keys() and site["u"] >= 0 and site["lambda"] >= 0
        assert site["gamma"] == site["theta"] and site["gamma"] < 1.0  # γ is the site's θ, and it moved

    # the projection is strictly equivariant; the kept model is not, and says so without failing
    relax_cli("project", summary["best_checkpoint"], "-o", "projected.safetensors", cwd=tmp_path)
    proc = relax_cli("project", "--keep-gamma", kept_ckpt, "-o", "kept.safetensors", cwd=tmp_path)
    error = float(proc.stdout.split("relative equivariance error ")[1].split()[0])
    assert error > 1e-4, proc.stdout
    proc = relax_cli("project", "--keep-gamma", kept_ckpt, "-o", "kept.safetensors", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr  # nothing is overwritten

    import relaxcli

    kept = relaxcli.load_model(tmp_path / "kept.safetensors")
    projected = relaxcli.load_model(tmp_path / "projected.safetensors")
    assert isinstance(kept, relaxcli.RelaxedModel) and isinstance(projected, SEGNN)
    stored = load_checkpoint(kept_ckpt)
    thetas = {k: float(v) for k, v in stored.branch_state().items() if k.endswith(".theta")}
    assert {f"{k}.theta": float(b.theta) for k, b in kept.branches.items()} == thetas
    inputs, _ = example_batch(
        NBodyData(train=40, val=20, test=20, seed=1, field=0.5, cache_dir=tmp_path / "cache").val, 4
    )
    kept.eval()
    with torch.no_grad():
        with kept.projected():
            assert torch.allclose(kept(*inputs), projected(*inputs), atol=1e-6)
        assert not torch.allclose(kept(*inputs), projected(*inputs), atol=1e-4)

    report = json.loads(relax_cli("inspect", "kept.safetensors", "--json", cwd=tmp_path).stdout)
    assert all(set(row["schedule"]) == {"lambda", "u"} for row in report["sites"])
    assert any(note.startswith("learnt schedule:") for note in report["notes"])
    table = relax_cli("inspect", "kept.safetensors", cwd=tmp_path).stdout
    assert "λ" in table and "γ" in table
