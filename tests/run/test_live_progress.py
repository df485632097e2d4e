"""The live progress display of a real ``relax train`` on a terminal of 80 columns (a pseudo-terminal): the bar on
one line, every number whole on the next, and the last epoch shown against the total."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path

from conftest import RELAX


def test_the_live_line_at_80_columns_cuts_no_number(tmp_path: Path, nbody_recipe: Callable[..., Path]) -> None:
    recipe = nbody_recipe(epochs=3, trainer={"log_every": 1})
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache"), "COLUMNS": "80", "TERM": "xterm"}
    proc = subprocess.Popen(
        [*RELAX, "train", str(recipe), "--run-dir", "run"],
        cwd=tmp_path,
        env=env,
        stdin=follower,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=120) == 0
    text = shown.decode("utf-8", errors="replace")
    assert "…" not in text, text[-2000:]
    assert "epoch 3/3" in text and "loss " in text and "θ " in text and "val(θ=0)" in text
    assert "epoch 4/3" not in text and "loss nan" not in text
    assert "step 1/" not in text  # the live bar, not the plain log lines of a pipe
