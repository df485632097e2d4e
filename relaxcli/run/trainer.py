"""The trainer: one batch from the recipe to the exported checkpoint.

Each step: the schedule sets θ; the relaxed model computes ``op(x) + θ·B(x)`` at every site and captures the
sites' inputs; ``loss = task_loss + λ·Σ regularisers (+ the schedule's own penalty)``; backward, clip, optimiser step.
Every ``eval_every`` epochs the **projected** model (θ = 0, branches off) and the relaxed model are evaluated on the
validation split; the best checkpoint is chosen on the projected validation metric, and the test metric is reported
at that checkpoint. A standard run (``relax: {enabled: false}``) runs the same loop with :class:`NoRelaxation`.

Under ``torchrun`` (see :mod:`relaxcli.run.distributed`) every process runs this loop on its share of each global
batch with the model in ``DistributedDataParallel``; metrics are reduced over the processes, and only rank 0 writes.

The run directory (claimed, marked and locked by :mod:`.rundir`) holds ``recipe.yaml`` (resolved, with the actual
seed), ``metrics.jsonl``/``metrics.csv``, ``plots/*.png``, ``checkpoints/{last,best}.safetensors`` and
``summary.json`` (strict JSON: ``null`` and ``null_reasons`` where a number is not finite). ``last`` also holds
everything needed to resume (optimiser, lr scheduler, θ schedule, RNG, counters); resuming re-runs the epoch that was
interrupted and ends with the same result as an uninterrupted run. A validation or test metric that is not finite is
an error naming the split and its non-finite items.

Example:
    >>> trainer = Trainer(load_recipe("recipes/nbody_relaxed.yaml"), Path("runs/nbody"))
    >>> summary = trainer.fit()
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ..core.calls import inference
from ..errors import RelaxError
from ..recipe import Recipe, dump_recipe, instantiate
from .batches import Counted, build_collate, call_args, call_model, example_batch, split_batch, to_device
from .build import DTYPES, build_data, build_model, build_relaxation, resolve_device
from .checkpoint import Checkpoint, load_checkpoint, load_user_state, save_relaxed, unflatten_state
from .distributed import GlobalBatches, current, shard, wrap
from .evaluation import METRICS
from .files import atomic_write
from .preflight import call_loss, check_components, check_run, check_scheduler
from .progress import Mode, Progress
from .relaxation import Relaxation
from .reports import write_csv, write_plots
from .runlog import MetricsLog, strict_json
from .symmetry import check_before_training

__all__ = ["Trainer", "check_checkpoints", "remove_leftovers"]


class Trainer:
    """Train the model of ``recipe`` into ``run_dir`` (created; or resumed from when ``resume=True``).

    Args:
        recipe: a validated recipe; a null ``seed`` is drawn here and recorded in ``run_dir/recipe.yaml``.
        run_dir: the run directory.
        resume: continue from ``run_dir/checkpoints/last.safetensors``.
        progress: False: show nothing; otherwise a live progress bar on stderr when it is a terminal, plain log lines
            (every ``log_every`` steps and every evaluation) when it is not.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False, progress: bool | None = None) -> None:
        self.dist = current()
        if recipe.seed is None:
            recipe.seed = self.dist.broadcast(random.SystemRandom().randrange(2**31))
        self.recipe, self.run_dir, self.resume = recipe, Path(run_dir), resume
        if not resume and self.dist.is_main:  # first of all, so that a run killed at any moment can be resumed
            atomic_write(self.run_dir / "recipe.yaml", dump_recipe(self.recipe))
        live = sys.stderr.isatty()  # a live bar on a terminal, plain log lines elsewhere; none on other ranks
        self.progress_mode: Mode = "off" if progress is False or not self.dist.is_main else "live" if live else "plain"
        cfg = recipe.trainer
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dtype = DTYPES[cfg.dtype]

        random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        self.model = build_model(recipe)
        self.splits = build_data(recipe)
        self.collate = Counted(build_collate(recipe))  # (batch, number of items)
        check_run(recipe, self.model, self.splits)  # empty splits, batch_size, classes, symmetry.inputs
        batches = self._batches(0)
        self.steps_per_epoch, self.dropped_items = len(batches), batches.dropped
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.relaxation: Relaxation = build_relaxation(self.model, recipe, self.total_steps, self.steps_per_epoch)
        self.net = self.relaxation.net.to(self.device)
        with self.relaxation.projected():  # the model as it starts: its symmetry section must fit it, and hold
            self.symmetry_check = check_before_training(
                recipe, self.net, self.splits, self.device, self.relaxation.enabled
            )
        self.loss_fn = instantiate(recipe.loss)
        self.optimizer = instantiate(recipe.optimizer, self.relaxation.param_groups())
        check_components(recipe, self.loss_fn, self.optimizer)
        # trainer.grad_clip bounds the model's and the branches' gradient; a learnt schedule's γ (and u), whose
        # gradient is the dual variable λ and grows until the constraint holds, is left out of the norm
        learnt = {id(p) for p in self.relaxation.schedule_params}
        self.clipped = [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in learnt]
        self.scheduler = instantiate(recipe.scheduler, self.optimizer) if recipe.scheduler is not None else None
        if recipe.scheduler is not None:
            check_scheduler(recipe, self.optimizer, self.scheduler)  # a scheduler at all, and a trial run of it

        self.epoch, self.step = 0, 0
        self.best_val, self.best_epoch = math.inf, -1
        self.best_relaxed_val = math.inf  # ace_elastic also delivers the relaxed model (γ kept), at its own best
        self.extra_metrics: dict[str, float] = {}  # trainer.metrics of the last evaluate()
        self.last_eval: tuple[float, float | None] | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._start_time = time.time()
        if resume:
            self._restore(self.ckpt_dir / "last.safetensors")
        self.log: MetricsLog | _NoLog = MetricsLog(self.metrics_path) if self.dist.is_main else _NoLog()
        self.train_net = wrap(self.net, self.device, self.dist)  # DistributedDataParallel under torchrun

    @property
    def relaxed(self) -> Any:
        """The relaxed model (None for a standard run)."""
        return self.relaxation.net if self.relaxation.enabled else None

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end, evaluate the test split at the best checkpoint, write plots and ``summary.json``."""
        cfg = self.recipe.trainer
        with Progress(self.progress_mode, self.total_steps, cfg.epochs, self.recipe.name) as progress:
            while self.epoch < cfg.epochs and self.step < self.total_steps:
                self._train_epoch(progress)
                self.epoch += 1  # from here on, self.epoch counts the completed epochs
                last = self.epoch >= cfg.epochs or self.step >= self.total_steps
                if self.epoch % cfg.eval_every == 0 or last:
                    self._evaluate_and_keep_best()
                if self.scheduler is not None:
                    self.scheduler.step()
                if self.epoch % cfg.checkpoint_every == 0 or last:
                    self._save("last", with_state=True)
                progress.epoch_done(self)
        summary = self._test()
        if self.dist.is_main:
            records = MetricsLog.read(self.metrics_path)
            write_csv(records, self.run_dir / "metrics.csv")
            write_plots(records, self.run_dir / "plots")
            atomic_write(self.run_dir / "summary.json", strict_json(summary, indent=2) + "\n")
        self.dist.barrier()
        return summary

    def _batches(self, epoch: int) -> GlobalBatches:
        """The epoch's batches: one shuffle of the training split, this process's share of each global batch."""
        assert self.recipe.seed is not None
        gen = torch.Generator().manual_seed(self.recipe.seed * 100_003 + epoch)
        n = len(self.splits.train)  # type: ignore[arg-type]
        return GlobalBatches(n, self.recipe.trainer.batch_size, gen, self.dist)

    def _train_epoch(self, progress: Progress) -> None:
        cfg = self.recipe.trainer
        self.net.train()
        batches = self._batches(self.epoch)
        loader = DataLoader(
            self.splits.train, batch_sampler=batches, num_workers=cfg.num_workers, collate_fn=self.collate
        )
        window: dict[str, float] = {}
        count = 0
        for (batch, size), global_size in zip(loader, batches.global_sizes):
            if self.step >= self.total_steps:
                break
            record = self.train_step(batch, size, global_size)
            for k, v in record.items():
                window[k] = window.get(k, 0.0) + v
            count += 1
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                mean = {k: v / count for k, v in window.items()}
                if "theta" in record:  # θ as set at this step (a window mean would hide its peak and its final 0)
                    mean["theta"] = record["theta"]
                self.log.append(
                    {
                        "kind": "train",
                        "step": self.step,
                        "epoch": self.epoch + 1,
                        **mean,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "time": round(time.time() - self._start_time, 3),
                    }
                )
                progress.update(self, mean["task"], total=mean["loss"])
                window, count = {}, 0

    def train_step(self, batch: Any, size: int, global_size: int | None = None) -> dict[str, float]:
        """One optimiser step on a collated batch of ``size`` items, this process's part of a global batch of
        ``global_size`` items (default: all of it). Returns the step's numbers, averaged over the processes."""
        inputs, target = to_device(split_batch(batch), self.device, self.dtype)
        # DDP averages gradients over the processes; weighting each process's mean loss by its share of the global
        # batch makes that average the gradient of the global batch's mean loss
        share = size / (global_size or size)
        self.relaxation.before_step(self.step)
        output = call_model(self.train_net, inputs, self.recipe.forward.call_kwargs(training=True))
        task = call_loss(self.recipe, self.loss_fn, output, target)  # names a bad loss
        reg, record = self.relaxation.regularize()
        data_loss = task + reg
        penalty = self.relaxation.penalty()  # a learnt schedule's own terms: the same on every process, not scaled
        loss = data_loss * (share * self.dist.world) if self.dist.enabled else data_loss
        if penalty is not None:
            loss = loss + penalty
            record["penalty"] = float(penalty.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.trainer.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.recipe.trainer.grad_clip)
        self.optimizer.step()
        self.relaxation.after_step(self.step)
        loss_value = float(data_loss.detach()) + record.get("penalty", 0.0)
        record = self.dist.weighted_mean({"loss": loss_value, "task": float(task.detach()), **record}, share)
        if not math.isfinite(record["loss"]):
            raise RelaxError(
                f"the loss became {record['loss']} at step {self.step} (epoch {self.epoch + 1}); lower "
                "the learning rate, set trainer.grad_clip, or lower relax.theta.max"
            )
        return record

    def dry_run(self) -> tuple[dict[str, float], dict[str, int]]:
        """One training step on the first batch, and how often each site fired in one forward pass of two
        validation items (a site that fires 0 or 2 times is bypassed or shared). Changes the model: for
        ``--dry-run`` and start-up checks on a throwaway trainer."""
        n = min(self.recipe.trainer.batch_size, len(self.splits.train))  # type: ignore[arg-type]
        batch, size = self.collate([self.splits.train[i] for i in range(n)])
        record = self.train_step(batch, size)
        return record, self.site_calls()

    def site_calls(self) -> dict[str, int]:
        """How often each site fires in one forward pass of two validation items (empty for a standard run)."""
        if not self.relaxation.enabled:
            return {}
        inputs, _ = example_batch(self.splits.val, 2, self.collate.collate)
        inputs = to_device(inputs, self.device, self.dtype)
        args, kwargs = call_args(inputs, self.net, self.recipe.forward.call_kwargs(training=False))
        self.net.eval()
        try:
            return self.relaxation.net.dry_run(*args, **kwargs)  # type: ignore[operator]
        finally:
            self.net.train()

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self, split: str, projected: bool = True) -> float:
        """Mean loss over a split, of the projected model (θ = 0) or of the relaxed model. The extra metrics of
        ``trainer.metrics`` (e.g. accuracy) from the same pass are kept in ``self.extra_metrics``. Without
        gradients, unless the model takes them in ``forward`` (forces by autograd): see
        :func:`relaxcli.core.calls.inference`.

        Raises:
            RelaxError: the loss or a metric is not finite; the message names the split and how many of its items
                have a non-finite target, input or output.
        """
        dataset = getattr(self.splits, split)
        if self.dist.enabled:  # each process evaluates every world-th item; the sums are reduced below
            dataset = Subset(dataset, shard(len(dataset), self.dist))
        cfg = self.recipe.trainer
        loader = DataLoader(
            dataset,
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            shuffle=False,
            num_workers=cfg.num_workers,
            collate_fn=self.collate,
        )
        kwargs = self.recipe.forward.call_kwargs(training=False)
        self.net.eval()
        # loss·n, n, items with a non-finite target, input, output, then each metric·n
        sums = torch.zeros(5 + len(cfg.metrics), dtype=torch.float64)
        try:
            for batch, size in loader:
                inputs, target = to_device(split_batch(batch), self.device, self.dtype)
                with self.relaxation.projected() if projected else contextlib.nullcontext():
                    out = inference(call_model, (self.net, inputs, kwargs), key=self.net)
                with torch.no_grad():
                    loss = float(self.loss_fn(out, target))
                sums[0] += loss * size
                sums[1] += size
                for k, value in enumerate((target, inputs, out)):
                    sums[2 + k] += float(_nonfinite_items(value, size).sum())
                for k, name in enumerate(cfg.metrics):
                    with torch.no_grad():
                        sums[5 + k] += float(METRICS[name](out, target)) * size
        finally:
            self.net.train()
            self.relaxation.release()
        sums = self.dist.all_reduce_sum(sums)
        n = max(float(sums[1]), 1.0)
        kind = "projected" if projected else "relaxed"
        self.extra_metrics = {f"{split}_{kind}_{name}": float(sums[5 + k]) / n for k, name in enumerate(cfg.metrics)}
        loss = float(sums[0]) / n
        if sums[2:5].any() or not all(map(math.isfinite, [loss, *self.extra_metrics.values()])):
            raise RelaxError(self._nonfinite_message(split, kind, int(sums[1]), [int(c) for c in sums[2:5]]))
        return loss

    def _nonfinite_message(self, split: str, kind: str, n: int, counts: list[int]) -> str:
        """Why an evaluation of ``split`` is not finite: ``counts`` of its ``n`` items with a non-finite target,
        input and output."""
        name = {"val": "validation"}.get(split, split)
        targets, inputs, outputs = counts
        where = f"at epoch {self.epoch} (step {self.step})" if split == "val" else "at the best checkpoint"
        if targets or inputs:
            found = " and ".join(
                f"{c} of {n} items with a non-finite {what} (NaN or inf)"
                for c, what in ((targets, "target"), (inputs, "input"))
                if c
            )
            return (
                f"the {name} split has {found}, so its loss and metrics are not numbers; fix or drop those items "
                f"in the data (data: {self.recipe.data.target})."
            )
        if outputs:
            return (
                f"the {kind} model gives non-finite outputs (NaN or inf) on {outputs} of {n} {name} items {where}, "
                "although their inputs and targets are finite: the training diverged. Lower the learning rate, "
                "set trainer.grad_clip, or lower relax.theta.max."
            )
        return (
            f"the {kind} model's {name} loss or metrics are not finite {where} although all {n} {name} items and "
            "outputs are: the values overflow. Check the loss and trainer.metrics for this data (or use "
            "trainer.dtype: float64)."
        )

    def _evaluate_and_keep_best(self) -> None:
        val_projected = self.evaluate("val", projected=True)
        extra = dict(self.extra_metrics)
        val_relaxed = None
        if self.relaxation.enabled:
            val_relaxed = self.evaluate("val", projected=False)
            extra.update(self.extra_metrics)
        best = val_projected < self.best_val
        if best:
            self.best_val, self.best_epoch = val_projected, self.epoch
            self._save("best", with_state=False)
        if self.relaxation.keeps_relaxation and val_relaxed is not None and val_relaxed < self.best_relaxed_val:
            self.best_relaxed_val = val_relaxed
            self._save("best_relaxed", with_state=False)
        self.log.append(
            {
                "kind": "eval",
                "step": self.step,
                "epoch": self.epoch,
                "val_projected": val_projected,
                "val_relaxed": val_relaxed,
                **extra,
                "theta": self.relaxation.theta(),
                "best": best,
                "sites": self.relaxation.site_stats(),
            }
        )
        self.last_eval = (val_projected, val_relaxed)

    def _test(self) -> dict[str, Any]:
        self.dist.barrier()  # rank 0 has written the checkpoints that every process reads back
        best = self.ckpt_dir / "best.safetensors"
        ckpt = load_checkpoint(best, recipe=self.recipe)  # the run's own recipe: the stored one is not read
        self._load_weights(ckpt)
        extra: dict[str, float] = {}
        test_projected = test_relaxed = None
        if self.splits.test is not None:
            test_projected = self.evaluate("test", True)
            extra.update(self.extra_metrics)
            if self.relaxation.enabled:
                test_relaxed = self.evaluate("test", False)
                extra.update(self.extra_metrics)
        record = {
            "kind": "test",
            "loss_fn": self.recipe.loss.target.rsplit(".", 1)[-1],  # what the val_*/test_* numbers are
            "step": int(ckpt.json("step")),
            "epoch": int(ckpt.json("epoch")),
            "val_projected": self.best_val,
            "test_projected": test_projected,
            "test_relaxed": test_relaxed,
            **extra,
        }
        kept: dict[str, Any] = {}
        if self.relaxation.keeps_relaxation:  # the relaxed model at its own best (γ kept) is a deliverable too
            path = self.ckpt_dir / "best_relaxed.safetensors"
            ckpt = load_checkpoint(path, recipe=self.recipe)
            self._load_weights(ckpt)
            kept = {
                "best_relaxed_epoch": int(ckpt.json("epoch")),
                "val_relaxed": self.best_relaxed_val,
                "test_relaxed_kept": self.evaluate("test", False) if self.splits.test is not None else None,
            }
            if self.splits.test is not None:
                kept.update({k.replace("test_relaxed", "test_relaxed_kept"): v for k, v in self.extra_metrics.items()})
            record.update(kept)
            kept["best_relaxed_checkpoint"] = str(path)
        self.log.append(record)
        return {
            "name": self.recipe.name,
            "seed": self.recipe.seed,
            "relaxed": self.relaxation.enabled,
            "best_epoch": record["epoch"],
            "best_step": record["step"],
            "val_projected": self.best_val,
            "test_projected": test_projected,
            "test_relaxed": test_relaxed,
            "steps": self.step,
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(best),
            **extra,
            **kept,
        }

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _save(self, which: str, with_state: bool) -> None:
        if not self.dist.is_main:
            return
        state = None
        if with_state:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "schedule": self.relaxation.state_dict(),
                "rng": torch.get_rng_state(),
                "python_rng": list(random.getstate()[1]),
                "best_val": self.best_val,
                "best_epoch": self.best_epoch,
                "best_relaxed_val": self.best_relaxed_val,
                "metrics_lines": MetricsLog.count_lines(self.metrics_path),
            }
        save_relaxed(
            self.ckpt_dir / f"{which}.safetensors",
            self.model,
            self.relaxation,
            self.recipe,
            self.step,
            self.epoch,
            state,
        )

    def _load_weights(self, ckpt: Checkpoint) -> None:
        load_user_state(self.model, ckpt.model_state())
        self.relaxation.load_branch_state(ckpt.branch_state())

    def _restore(self, path: Path) -> None:
        check_checkpoints(self.run_dir, self.recipe)  # a damaged checkpoint stops here, before anything is changed
        if self.dist.is_main:
            remove_leftovers(self.run_dir)
        if not path.exists():  # killed before the first checkpoint: start again from the recorded seed
            if self.dist.is_main:
                MetricsLog.truncate(self.metrics_path, 0)
            return
        ckpt = load_checkpoint(path, recipe=self.recipe)
        skeleton = ckpt.json("trainer_state")
        if skeleton is None:
            raise RelaxError(f"{path} holds no trainer state; only checkpoints/last.safetensors can be resumed")
        self._load_weights(ckpt)
        state = unflatten_state(skeleton, ckpt.tensors)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.relaxation.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        random.setstate((3, tuple(state["python_rng"]), None))
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_relaxed_val = state.get("best_relaxed_val", math.inf)  # absent in checkpoints before ACE
        self.epoch, self.step = int(ckpt.json("epoch")), int(ckpt.json("step"))
        if self.dist.is_main:
            MetricsLog.truncate(self.metrics_path, state["metrics_lines"])
            times = [r["time"] for r in MetricsLog.read(self.metrics_path) if isinstance(r.get("time"), (int, float))]
            self._start_time -= max(times, default=0.0)  # the time column goes on from where the run stopped


def check_checkpoints(run_dir: Path, recipe: Recipe) -> None:
    """Read the checkpoints that resuming ``run_dir`` uses (``last``, ``best``, ``best_relaxed``), verifying their
    content hashes: a damaged one raises :class:`RelaxError` saying so. Reads only, so a refused ``--resume`` leaves
    the run directory as it was; the stored recipes are not read (``recipe`` is the run's)."""
    for name in ("last", "best", "best_relaxed"):
        path = run_dir / "checkpoints" / f"{name}.safetensors"
        if path.exists():
            load_checkpoint(path, recipe=recipe)


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Remove the temporary files of writes that a kill interrupted (``checkpoints/.last.safetensors.<x>.tmp``, the
    same beside ``recipe.yaml``, the metrics and the plots); they are never read. Returns what was removed."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "plots"):
        for leftover in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    return removed


def _nonfinite_items(value: Any, size: int) -> torch.Tensor:
    """Which of the ``size`` items of a batch (a tensor, or a tuple/list/dict of them) hold a NaN or inf."""
    bad = torch.zeros(size, dtype=torch.bool)
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    for x in parts:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0 and x.shape[0] == size:
            bad |= (~torch.isfinite(x.detach())).reshape(size, -1).any(dim=1).cpu()
    return bad


class _NoLog:
    """The metrics log of a process other than rank 0: records are reduced, then dropped."""

    def append(self, record: Any) -> None:
        pass
