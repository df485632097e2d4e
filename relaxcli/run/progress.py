"""What ``relax train`` shows while it trains, on stderr: the step, the epoch of all epochs, the training task loss
(with the total that is minimised, regularisers and a learnt schedule's penalty included, in parentheses when it
differs), θ (and a learnt schedule's means) and the last validation of the projected model.

Three modes: ``live`` (a rich progress bar, on a terminal), ``plain`` (one log line every ``log_every`` steps and
after every evaluation: for CI, ``nohup`` and cluster logs) and ``off``.

Example:
    >>> with Progress("plain", total_steps=600, epochs=60, name="nbody") as progress:
    ...     progress.update(trainer, loss)
    step 10/600  epoch 1/60  loss 0.3121  θ 0.0334
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from .runlog import symbol

__all__ = ["Progress", "Mode"]

Mode = Literal["live", "plain", "off"]


class Progress:
    """The progress display of one run; ``update`` after logged steps, ``epoch_done`` after each epoch."""

    def __init__(self, mode: Mode, total: int, epochs: int, name: str, console: Any = None) -> None:
        self.mode, self.total, self.epochs, self.name = mode, total, epochs, name
        self.console = console  # a rich Console for the live bar (default: stderr)
        self.bar: Any = None
        self.loss: float | None = None
        self.minimised: float | None = None
        self._shown_eval: Any = None

    def __enter__(self) -> Progress:
        if self.mode == "live":
            self.bar = _two_line_bar(self.console)
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.total, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _info(self, trainer: Any, epoch: int) -> str:
        parts = [f"epoch {min(epoch, self.epochs)}/{self.epochs}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
            if self.minimised is not None and f"{self.minimised:.3g}" != f"{self.loss:.3g}":
                parts[-1] += f" (total {self.minimised:.3g})"
        parts += [f"{symbol(k)} {v:.3g}" for k, v in trainer.relaxation.summary().items()]
        if trainer.last_eval is not None:
            parts.append(f"val(θ=0) {trainer.last_eval[0]:.4g}")
        return "  ".join(parts)

    def update(
        self, trainer: Any, loss: float | None = None, epoch: int | None = None, total: float | None = None
    ) -> None:
        """Show ``trainer``'s state; ``loss`` is the mean training task loss since the last update and ``total``
        the mean of what is minimised (both kept until the next update), ``epoch`` the 1-based epoch shown
        (default: the one in progress)."""
        if loss is not None:
            self.loss, self.minimised = loss, total
        info = self._info(trainer, trainer.epoch + 1 if epoch is None else epoch)
        if self.bar is not None:
            self.bar.update(self.task, completed=trainer.step, info=info)
        elif self.mode == "plain":
            print(f"step {trainer.step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def epoch_done(self, trainer: Any) -> None:
        """After an epoch (``trainer.epoch`` counts the completed ones): the live bar shows it; a plain log gets a
        line when an evaluation happened."""
        if self.mode == "plain" and trainer.last_eval is self._shown_eval:
            return
        self._shown_eval = trainer.last_eval
        self.update(trainer, epoch=trainer.epoch)


def _two_line_bar(console: Any = None) -> Any:
    """A rich progress bar whose numbers go on a line of their own below the bar, so that a narrow terminal wraps
    them instead of cutting them."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class TwoLines(RichProgress):
        def get_renderables(self) -> Any:
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                yield Text(str(task.fields.get("info", "")))

    return TwoLines(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )
