"""The live progress line of ``relax train`` on stderr: step bar, epoch of epochs, loss, θ (and a learnt schedule's
means) and the last validation of the projected model. Silent when disabled (off a terminal by default).

Example:
    >>> with Progress(True, total_steps=600, epochs=60, name="nbody") as progress:
    ...     progress.update(trainer, loss)
"""

from __future__ import annotations

from typing import Any

from .runlog import symbol

__all__ = ["Progress"]


class Progress:
    """A rich progress bar on stderr; ``update`` after logged steps, ``epoch_done`` after each epoch."""

    def __init__(self, enabled: bool, total: int, epochs: int, name: str) -> None:
        self.enabled, self.total, self.epochs, self.name = enabled, total, epochs, name
        self.bar: Any = None
        self.loss: float | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.total, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, trainer: Any, loss: float | None = None, epoch: int | None = None) -> None:
        """Show ``trainer``'s state; ``loss`` is the mean training loss since the last update (kept until the
        next one), ``epoch`` the 1-based epoch shown (default: the one in progress)."""
        if loss is not None:
            self.loss = loss
        if self.bar is None:
            return
        epoch = trainer.epoch + 1 if epoch is None else epoch
        parts = [f"epoch {min(epoch, self.epochs)}/{self.epochs}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        parts += [f"{symbol(k)} {v:.3g}" for k, v in trainer.relaxation.summary().items()]
        if trainer.last_eval is not None:
            parts.append(f"val(θ=0) {trainer.last_eval[0]:.4g}")
        self.bar.update(self.task, completed=trainer.step, info=" ".join(parts))

    def epoch_done(self, trainer: Any) -> None:
        self.update(trainer, epoch=trainer.epoch)  # trainer.epoch counts the completed epochs here
