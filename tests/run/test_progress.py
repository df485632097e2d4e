"""What ``relax train`` shows while training: plain log lines off a terminal, with real numbers and the last epoch
shown against the total."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


def test_off_a_terminal_train_logs_plain_lines_with_real_losses(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=3, train=40, trainer={"log_every": 2})  # 4 steps per epoch, 12 in all
    proc = relax_cli("train", recipe, "--run-dir", "run", cwd=tmp_path)  # stderr is a pipe here
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
    steps = [int(re.match(r"step (\d+)/12", ln).group(1)) for ln in lines]  # type: ignore[union-attr]
    assert sorted(set(steps)) == [2, 4, 6, 8, 10, 12]  # every log_every steps (and again at evaluations)
    losses = [float(m.group(1)) for ln in lines if (m := re.search(r"loss (\S+)", ln))]
    assert losses and all(x == x and x > 0 for x in losses)  # real numbers, never nan
    # "loss" is the task loss (what validation measures), the total with the regulariser in parentheses
    log = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in log if r["kind"] == "train"}
    for ln in lines:
        step, shown = int(ln.split()[1].split("/")[0]), re.search(r"loss (\S+) \(total (\S+)\)", ln)
        if step in train and shown:
            assert float(shown.group(1)) == float(f"{train[step]['task']:.4g}")
            assert float(shown.group(2)) == float(f"{train[step]['loss']:.3g}") > float(shown.group(1))
    assert any("(total " in ln for ln in lines)
    assert "nan" not in proc.stderr
    evals = [ln for ln in lines if "val(θ=0)" in ln]
    assert len(evals) >= 3 and "epoch 3/3" in lines[-1]  # every evaluation, and the last epoch against the total
    assert "epoch 4/3" not in proc.stderr


def test_no_progress_is_silent(
    tmp_path: Path, relax_cli: Callable[..., Any], nbody_recipe: Callable[..., Path]
) -> None:
    recipe = nbody_recipe(epochs=1)
    proc = relax_cli("train", recipe, "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert not [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
