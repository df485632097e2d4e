"""What a user reads at 80 columns and off a terminal: nothing is cut (no ellipsis in paths or numbers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS_80 = {"COLUMNS": "80"}


def test_inspect_and_recipes_at_80_columns_cut_nothing(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    relax_cli("train", nbody_recipe(epochs=1), "--run-dir", "run", cwd=tmp_path)
    for columns in ("80", "200"):
        shown = relax_cli("inspect", "run/checkpoints/best.safetensors", cwd=tmp_path, env={"COLUMNS": columns}).stdout
        tables = [ln for ln in shown.splitlines() if ln[:1] in "┏┃┡│└"]
        assert "…" not in shown and max(map(len, tables)) <= int(columns), shown
        for path in ("layers.0.message1.tp", "layers.0.update2", "readout1.tp"):
            assert path in shown
    recipe = tmp_path / "tiny.yaml"  # inspect takes overrides of a recipe, as train does; not of a checkpoint
    plain = relax_cli("inspect", recipe, "relax.enabled=false", "--json", cwd=tmp_path).stdout
    assert json.loads(plain)["sites"] == []
    refused = relax_cli("inspect", "run/checkpoints/best.safetensors", "trainer.epochs=3", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "apply to a recipe" in refused.stderr
    listing = relax_cli("recipes", cwd=tmp_path, env=COLUMNS_80).stdout
    assert "…" not in listing and max(map(len, listing.splitlines())) <= 80
    help_text = relax_cli("train", "--help", cwd=tmp_path, env=COLUMNS_80).stdout
    assert "<bool>" not in help_text and "…" not in help_text


def test_plot_overlays_a_relaxed_run_and_its_standard_twin(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    relax_cli("train", nbody_recipe("relaxed", epochs=2), "--run-dir", "relaxed", "--no-progress", cwd=tmp_path)
    relax_cli(
        "train",
        nbody_recipe("standard", epochs=2, relax={"enabled": False}),
        "--run-dir",
        "standard",
        "--no-progress",
        cwd=tmp_path,
    )
    proc = relax_cli("plot", "relaxed", "standard", "-o", "both.png", cwd=tmp_path)
    assert "wrote both.png" in proc.stdout
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = relax_cli("plot", "relaxed", "standard", "-o", "both.png", cwd=tmp_path, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    (tmp_path / "notes").mkdir()
    wrong = relax_cli("plot", "relaxed", "notes", cwd=tmp_path, check=False)
    assert wrong.returncode == 1 and "notes is not a run directory" in wrong.stderr
