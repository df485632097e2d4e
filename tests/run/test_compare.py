"""``relax compare``: variants × seeds through the real CLI, killed and resumed, and the table's numbers."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import RELAX, RunRelax, read_json

from relaxcli.errors import RecipeError
from relaxcli.run.compare import (
    RECIPE,
    STANDARD,
    RunSpec,
    Variant,
    _check_same_recipe,
    parse_variant,
    plan,
    report,
    variants_to_compare,
)


def test_variants_parse_and_the_builtin_pair_is_included() -> None:
    v = parse_variant("mixed=relax.theta.max=0.2,symmetry.inputs=[cartesian_points,1x1o,null],trainer.epochs=3")
    assert v == Variant(
        "mixed", ("relax.theta.max=0.2", "symmetry.inputs=[cartesian_points,1x1o,null]", "trainer.epochs=3")
    )
    assert parse_variant("again=").overrides == ()
    assert [x.name for x in variants_to_compare(["ace=relax.theta.schedule=ace"])] == ["standard", "recipe", "ace"]
    mine = variants_to_compare(["standard=relax.enabled=false,trainer.epochs=9"], recipe=False)
    assert mine == [Variant("standard", ("relax.enabled=false", "trainer.epochs=9"))]
    assert [s.name for s in plan(Path("o"), [STANDARD, RECIPE], 2)][1:3] == ["recipe-seed0", "standard-seed1"]
    for bad, match in [
        ("noequals", "expected NAME=OVERRIDE"),
        ("a/b=x=1", "expected NAME=OVERRIDE"),
        ("x=relax.theta.max", "is not KEY=VALUE"),
        ("x=seed=3", "sets the seed"),
    ]:
        with pytest.raises(RecipeError, match=match):
            parse_variant(bad)
    with pytest.raises(RecipeError, match="more than once"):
        variants_to_compare(["a=x=1", "a=x=2"])
    with pytest.raises(RecipeError, match="nothing to compare"):
        variants_to_compare([], standard=False, recipe=False)


def _fake_run(path: Path, metric: float, seconds: float, evals: list[tuple[int, float]], steps: int = 100) -> None:
    """A finished run directory as the trainer leaves it (summary.json and metrics.jsonl only)."""
    path.mkdir(parents=True)
    lines = [{"kind": "train", "step": s, "time": seconds * s / steps} for s in range(10, steps + 1, 10)]
    lines += [{"kind": "eval", "step": s, "val_projected": v} for s, v in evals]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = {"steps": steps, "val_projected": min(v for _, v in evals), "test_projected": metric, "best_epoch": 1}
    (path / "summary.json").write_text(json.dumps(summary))


def test_report_numbers_follow_their_definitions(tmp_path: Path) -> None:
    variants = [STANDARD, Variant("ace", ("relax.theta.schedule=ace",))]
    specs = plan(tmp_path, variants, 3)
    # standard: 10 s per run; ace: 20 s, better at the end in seeds 0 and 1, behind at matched time
    for k, (m_std, m_ace) in enumerate([(1.0, 0.9), (2.0, 1.8), (1.0, 1.1)]):
        _fake_run(tmp_path / "runs" / f"standard-seed{k}", m_std, 10.0, [(50, 0.5), (100, 0.4)])
        _fake_run(tmp_path / "runs" / f"ace-seed{k}", m_ace, 20.0, [(50, 0.6), (100, 0.3)])
    result = report(specs, tmp_path / "r.yaml", [], out=tmp_path, equivariance=False, plot=False)
    std, ace = result.rows
    assert ace["mean"] == pytest.approx(statistics.fmean([0.9, 1.8, 1.1]))
    assert ace["std"] == pytest.approx(statistics.stdev([0.9, 1.8, 1.1]))
    assert ace["ratio"] == pytest.approx(statistics.fmean([0.9, 1.8, 1.1]) / statistics.fmean([1.0, 2.0, 1.0]))
    assert (ace["wins"], ace["paired"], std["wins"]) == (2, 3, None)
    assert ace["step_time_ratio"] == pytest.approx(2.0)
    # budget: standard's 10 s; ace reached step 50 (at 10 s) by then, so its best validation is 0.6
    assert result.summary["budget_seconds"] == pytest.approx(10.0)
    assert ace["val_at_budget_mean"] == pytest.approx(0.6) and std["val_at_budget_mean"] == pytest.approx(0.4)
    assert ace["val_at_budget_wins"] == 0
    assert read_json(tmp_path / "summary.json")["variants"][1]["wins"] == 2  # strict JSON
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["variant"] for r in rows] == ["standard", "ace"] and float(rows[1]["ratio"]) == pytest.approx(
        ace["ratio"]
    )
    assert "| ace | 3/3 |" in (tmp_path / "table.md").read_text()


def test_a_bad_variant_is_one_paragraph_and_exit_2(relax_cli: RunRelax, nbody_recipe: Callable[..., Path]) -> None:
    recipe = nbody_recipe()
    proc = relax_cli("compare", recipe, "--variant", "x=seed=1", cwd=recipe.parent, check=False)
    assert proc.returncode == 2 and "sets the seed" in proc.stderr and "Traceback" not in proc.stderr


def test_compare_is_killed_then_resumed_and_its_table_is_the_runs_own(
    relax_cli: RunRelax, nbody_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = nbody_recipe(epochs=3, train=20, val=10, test=10)
    args = [
        "compare", recipe, "--variant", "small=relax.theta.max=0.5", "--no-recipe",
        "--seeds", "2", "--jobs", "2", "--threads", "2", "-o", "cmp",
    ]  # fmt: skip
    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache")}
    runs = tmp_path / "cmp" / "runs"
    proc = subprocess.Popen(
        [*RELAX, *map(str, args)], cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list(runs.glob("*/summary.json")):  # the first run finishes
            assert proc.poll() is None, "compare ended before it was killed"
            time.sleep(0.05)
        half_way = time.time() + 10  # give another run the chance to be caught between checkpoints
        while time.time() < half_way and not any(
            (d / "checkpoints" / "last.safetensors").exists() and not (d / "summary.json").exists()
            for d in runs.iterdir()
        ):
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # compare and its relax train processes
        proc.wait()
    finished = {
        d.name: (d / "summary.json").stat().st_mtime_ns for d in runs.iterdir() if (d / "summary.json").exists()
    }
    assert 1 <= len(finished) < 4

    again = relax_cli(*args, cwd=tmp_path, env={"RELAX_CACHE": str(tmp_path / "cache")})
    for name, mtime in finished.items():
        assert f"{name}: finished, skipped" in again.stderr
        assert (runs / name / "summary.json").stat().st_mtime_ns == mtime  # not trained again
    for name in {"standard-seed0", "small-seed0", "standard-seed1", "small-seed1"} - set(finished):
        # resumed where it was killed half-way, started again where it had no recipe.yaml yet, else started
        assert any(f"{name}: {how}" in again.stderr for how in ("resuming", "training again", "training ("))
    table = read_json(tmp_path / "cmp" / "summary.json")
    names = ["standard-seed0", "small-seed0", "standard-seed1", "small-seed1"]
    assert sorted(table["runs"]) == sorted(names)
    own = {n: read_json(runs / n / "summary.json")["test_projected"] for n in names}
    for name in names:
        assert table["runs"][name]["metric"] == own[name]  # the table's numbers are the runs' own
        assert table["runs"][name]["status"] == "finished"
        assert table["runs"][name]["equivariance_error"] < 1e-4
    rows = {r["variant"]: r for r in table["variants"]}
    for v in ("standard", "small"):
        assert rows[v]["mean"] == pytest.approx(statistics.fmean([own[f"{v}-seed0"], own[f"{v}-seed1"]]))
    assert rows["small"]["ratio"] == pytest.approx(rows["small"]["mean"] / rows["standard"]["mean"])
    wins = sum(own[f"small-seed{k}"] < own[f"standard-seed{k}"] for k in range(2))
    assert (rows["small"]["wins"], rows["small"]["paired"]) == (wins, 2)
    assert math.isfinite(rows["small"]["step_time_ratio"]) and table["budget_seconds"] > 0
    assert f"{rows['small']['mean']:.5g}" in (tmp_path / "cmp" / "table.md").read_text()
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    recipes = {(runs / n / "recipe.yaml").read_text().split("seed:")[1].split()[0] for n in names}
    assert recipes == {"0", "1"}


def test_a_run_from_before_a_new_recipe_key_is_still_the_same_run(
    tmp_path: Path, nbody_recipe: Callable[..., Path]
) -> None:
    """A finished run's recipe.yaml that lacks a key a later relax added (at a default that keeps the old behaviour)
    is the same recipe; a key that differs is named."""
    import yaml

    from relaxcli.errors import RelaxError
    from relaxcli.recipe import dump_recipe, load_recipe

    expected = yaml.safe_load(dump_recipe(load_recipe(nbody_recipe())))
    old = yaml.safe_load(dump_recipe(load_recipe(nbody_recipe())))
    del old["relax"]["regularizer"]["reduce"]  # written before relax.regularizer.reduce existed
    spec = RunSpec(RECIPE, 0, tmp_path / "runs" / "recipe-seed0")
    spec.path.mkdir(parents=True)
    (spec.path / "recipe.yaml").write_text(yaml.safe_dump(old))
    _check_same_recipe(spec, expected)  # no error: the missing key is at its default
    old["relax"]["regularizer"]["weight"] = 0.5
    (spec.path / "recipe.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(RelaxError, match=r"relax\.regularizer\.weight: 0\.5 there, 0\.01 now"):
        _check_same_recipe(spec, expected)
