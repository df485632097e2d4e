"""The ``relax`` command: ``train``, ``project``, ``inspect``, ``compare`` and ``recipes``.

Errors that a user can fix are printed as one paragraph on stderr with a non-zero exit code (2: bad recipe or
arguments, 3: not equivariant, 1: anything else); ``--debug`` anywhere on the command line adds the traceback.

Example:
    $ relax train recipes/nbody_relaxed.yaml trainer.epochs=5
    $ relax project runs/nbody-relaxed-20261122-120000/checkpoints/best.safetensors
    $ relax inspect runs/nbody-relaxed-20261122-120000/checkpoints/best.projected.safetensors --tolerance 1e-6
    $ relax compare recipes/nbody_relaxed.yaml --variant ace=relax.theta.schedule=ace --seeds 3 --out cmp
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import RelaxError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Constraint relaxation for equivariant networks: train relaxed, project back, inspect.",
)
# tables fit the terminal (or $COLUMNS), and stay whole in files and pipes
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err = Console(stderr=True, soft_wrap=True)
_debug = False  # set by main() when --debug is on the command line
_argv: list[str] = []  # the command line as main() got it (for `train --nproc`, which re-launches it)


def _version(value: bool) -> None:
    if value:
        from ._version import __version__

        out.print(f"relax {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error (anywhere on the command line).")
    ] = False,
) -> None:
    """Constraint relaxation for equivariant networks: train relaxed, project back, inspect."""


def _user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one paragraph on stderr and an exit code; tracebacks only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RelaxError as e:
            if _debug:
                traceback.print_exc()
            err.print(f"{_rank_prefix()}error: {e}", highlight=False, markup=False)
            raise typer.Exit(e.exit_code) from None
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except Exception as e:  # an error in user code or a bug: one paragraph, the traceback only with --debug
            if _debug:
                traceback.print_exc()
            hint = "" if _debug else "\n(re-run with --debug for the traceback)"
            err.print(f"{_rank_prefix()}error: {type(e).__name__}: {e}{hint}", highlight=False, markup=False)
            raise typer.Exit(1) from None

    return wrapper


def _rank_prefix() -> str:
    """``"rank N: "`` in the processes of a torchrun job other than rank 0 (which speaks for the job)."""
    rank = os.environ.get("RANK", "0")
    return "" if rank == "0" else f"rank {rank}: "


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


# -- train -------------------------------------------------------------------------------------------------------
@app.command(short_help="Train a recipe (relaxed, or its standard twin).")
@_user_errors
def train(
    recipe: Annotated[
        Optional[Path], typer.Argument(help="The recipe YAML (not needed with --resume).", metavar="RECIPE")
    ] = None,
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="KEY=VALUE overrides, e.g. trainer.epochs=5.", metavar="KEY=VALUE")
    ] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<name>-<time>).")] = None,
    runs_root: Annotated[Path, typer.Option(help="Where new run directories go.")] = Path("runs"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --run-dir.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build, relax, run one step, show the sites, exit.")
    ] = False,
    progress: Annotated[
        Optional[bool],
        typer.Option(
            "--progress/--no-progress",
            help="Progress on stderr: a live bar on a terminal, log lines elsewhere (default); --no-progress: none.",
        ),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option(
            help="Train data-parallel in this many processes on this machine (launches "
            "torchrun; one GPU each on CUDA).",
            min=1,
        ),
    ] = 1,
    trust_recipe: Annotated[
        bool,
        typer.Option(
            "--trust-recipe",
            help="With --resume: trust the run directory's "
            "recipe.yaml, which may then name components off relax's allowlist "
            "(your own model class). See 'Security' in the README.",
        ),
    ] = False,
) -> None:
    """Train the recipe's model (relaxed unless relax.enabled is false); validation reports the projected model."""
    from .recipe import dump_recipe, load_recipe
    from .run import rundir
    from .run.distributed import init_from_env
    from .run.trainer import Trainer, check_checkpoints

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc)
    if resume is not None:
        if recipe is not None or overrides:
            raise RelaxError(
                "--resume continues a run exactly as it was recorded: give only the run directory, "
                f"e.g. 'relax train --resume {resume}' (no recipe, no overrides)"
            )
        rundir.check_resumable(resume)
        rec = load_recipe(resume / "recipe.yaml", trust=trust_recipe)  # a file, read as data unless trusted
        check_checkpoints(resume, rec)  # a damaged checkpoint is refused before the run directory is touched
        dist = init_from_env(rec.trainer.device)
        held, _ = _claim_run_dir(dist, lambda: rundir.reopen(resume))
        with held:  # the run directory's lock, until the summary is written
            trainer = Trainer(rec, resume, resume=True, progress=progress)
            if dist.is_main:
                err.print(f"resuming {resume} at epoch {trainer.epoch}, step {trainer.step}", highlight=False)
            _finish(_announce(trainer))
        return
    if recipe is None:
        raise RelaxError(
            "give a recipe, e.g. 'relax train recipes/nbody_relaxed.yaml' (see 'relax recipes'), or --resume RUN_DIR"
        )
    rec = load_recipe(recipe, overrides or [])
    if print_config:
        out.print(dump_recipe(rec), end="", markup=False, highlight=False)
        return
    if dry_run:
        _dry_run(rec)
        return
    dist = init_from_env(rec.trainer.device)
    inputs = rundir.recipe_inputs(recipe, rec.to_dict())
    held, run_dir = _claim_run_dir(dist, lambda: rundir.prepare(run_dir, runs_root, rec.name, overwrite, inputs))
    with held:  # the run directory's lock, until the summary is written
        if dist.is_main:
            err.print(f"run directory: {run_dir}", highlight=False)
        _finish(_announce(Trainer(rec, run_dir, progress=progress)))


def _claim_run_dir(dist: Any, claim: Callable[[], Any]) -> tuple[Any, Path]:
    """Rank 0 claims the run directory (``claim()``: marker and lock, see :mod:`relaxcli.run.rundir`); under
    torchrun the other processes learn its path from rank 0, or stop (exit 1) when rank 0 could not claim it.
    Returns what to hold for the whole run (a context manager) and the path."""
    import contextlib

    held, problem = None, None
    if dist.is_main:
        try:
            held = claim()
        except RelaxError as e:
            if not dist.enabled:
                raise
            problem = e
    path, failed = dist.broadcast((None if held is None else held.path, problem is not None))
    if problem is not None:
        raise problem
    if failed:
        raise typer.Exit(1)  # rank 0 says why
    return (held if held is not None else contextlib.nullcontext()), path


def _launch_torchrun(nproc: int) -> None:
    """Re-run this very command under ``torchrun --standalone --nproc_per_node nproc``, then exit with its code."""
    args, skip = [], False
    for a in _argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "relaxcli",
        *args,
    ]
    err.print(f"launching: {' '.join(cmd[1:])}", highlight=False)
    raise typer.Exit(subprocess.call(cmd))


def _finish(trainer: Any) -> None:
    """Train to the end; rank 0 prints the summary."""
    summary = trainer.fit()
    if trainer.dist.is_main:
        _print_summary(summary)


def _announce(trainer: Any) -> Any:
    """Say on stderr how the model was relaxed (and why hooks were used, when they were)."""
    if not trainer.dist.is_main:
        return trainer
    if trainer.dropped_items:
        err.print(
            f"warning: the last batch of each epoch ({trainer.dropped_items} items) is smaller than the "
            f"{trainer.dist.world} processes and is skipped",
            highlight=False,
        )
    _warn(trainer)
    r = trainer.relaxed
    if r is None:
        err.print("standard training (relax.enabled is false)", highlight=False)
        return trainer
    err.print(_sites_line(r), highlight=False)
    if r.skipped:
        err.print(_skipped_line(r), highlight=False)
    for path, n in trainer.site_calls().items():
        if n != 1:
            err.print(
                f"warning: site {path} fired {n} times in one forward pass"
                + (" (bypassed: its branch is never used)" if n == 0 else " (a shared module)"),
                highlight=False,
            )
    return trainer


def _warn(trainer: Any) -> None:
    """Warnings before training: a standard run of a model that is not equivariant trains (a baseline, say); a
    learnt γ that the optimiser cannot bring to 0 within the run."""
    from .run.symmetry import unrelaxed_problem

    problems = [
        unrelaxed_problem(trainer.recipe, trainer.symmetry_check),
        trainer.relaxation.gamma_budget_problem(trainer.optimizer, trainer.total_steps),
    ]
    for problem in problems:
        if problem is not None:
            err.print(f"warning: {problem}", highlight=False, markup=False)


def _print_summary(s: dict[str, Any]) -> None:
    kind = "relaxed" if s["relaxed"] else "standard"
    out.print(
        f"{s['name']} ({kind} training, seed {s['seed']}): best epoch {s['best_epoch']}, "
        f"val (projected) {_fmt(s['val_projected'])}, test (projected) {_fmt(s['test_projected'])}"
        + (f", test (relaxed) {_fmt(s['test_relaxed'])}" if s["test_relaxed"] is not None else ""),
        highlight=False,
    )
    for key in s:  # the recipe's trainer.metrics, e.g. test_projected_accuracy
        if key.startswith("test_projected_") and s[key] is not None:
            name = key.removeprefix("test_projected_")
            relaxed = s.get(f"test_relaxed_{name}")
            out.print(
                f"test {name} (projected) {_fmt(s[key])}"
                + (f", (relaxed) {_fmt(relaxed)}" if relaxed is not None else ""),
                highlight=False,
            )
    if "best_relaxed_checkpoint" in s:
        out.print(
            f"relaxed model with γ kept: best epoch {s['best_relaxed_epoch']}, val {_fmt(s['val_relaxed'])}, "
            f"test {_fmt(s['test_relaxed_kept'])}",
            highlight=False,
        )
    out.print(f"run directory: {s['run_dir']}", highlight=False)
    if s["relaxed"]:
        out.print(f"next: relax project {s['best_checkpoint']}", highlight=False)
    if "best_relaxed_checkpoint" in s:
        out.print(f"  or: relax project --keep-gamma {s['best_relaxed_checkpoint']}", highlight=False)


def _dry_run(rec: Any) -> None:
    from .run.inspect import site_rows
    from .run.symmetry import example_inputs
    from .run.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(rec, Path(tmp), progress=False)
        _warn(trainer)
        step, _ = trainer.dry_run()
        out.print(
            f"{rec.name}: one training step ok: loss {step['loss']:.4g} (task {step['task']:.4g}); "
            f"{trainer.steps_per_epoch} steps per epoch, {trainer.total_steps} steps in all",
            highlight=False,
        )
        if trainer.relaxed is None:
            out.print("relax.enabled is false: standard training, no sites", highlight=False)
            return
        out.print(_sites_line(trainer.relaxed), highlight=False)
        _site_table(site_rows(trainer.relaxed, example_inputs(rec, 4), rec.forward.call_kwargs(training=False)))
        if trainer.relaxed.skipped:
            out.print(_skipped_line(trainer.relaxed), highlight=False)


def _sites_line(r: Any) -> str:
    """``relaxed 19 sites (2 computed on the nodes), graph pass: fx``, with why hooks were used where they were."""
    reason = f"; {r.fallback_reason}" if r.mode == "hooks" and r.fallback_reason else ""
    fused, on_nodes = sum(s.fused for s in r.sites), sum(s.on_nodes for s in r.sites)
    notes = [f"{fused} fused with their op"] * bool(fused) + [f"{on_nodes} computed on the nodes"] * bool(on_nodes)
    note = f" ({'; '.join(notes)})" if notes else ""
    return f"relaxed {len(r.sites)} sites{note}, graph pass: {r.mode}{reason}"


def _skipped_line(relaxed: Any) -> str:
    """The sites found but left without a branch, and why (one line per reason)."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in relaxed.skipped:
        by_reason.setdefault(reason, []).append(path)
    return "\n".join(
        f"skipped {len(paths)} site{'s' * (len(paths) != 1)} ({', '.join(paths)}): {reason}; "
        "relax.scalar_sites: true relaxes them too"
        for reason, paths in by_reason.items()
    )


def _site_table(rows: list[Any]) -> None:
    """The relaxed sites as a table; where the terminal is too narrow for it, one block per site, so that paths and
    numbers are never cut."""
    from .run.runlog import symbol

    learnt = list(dict.fromkeys(k for r in rows for k in r.schedule))  # a learnt schedule's own numbers (ACE: λ, u)
    numbers = ["γ" if learnt else "θ", *map(symbol, learnt), "‖B‖", "‖Bx‖", "Lie", "discrete"]
    table = Table(title="relaxed sites (‖Bx‖, Lie, discrete: on validation inputs)")
    table.add_column("site", no_wrap=True)
    ops = [r.op.rsplit(".", 1)[-1] for r in rows]
    table.add_column("op", no_wrap=True, min_width=max(map(len, ops), default=2))
    table.add_column("in → out", overflow="fold", min_width=16)
    for col in [*numbers, "calls"]:
        table.add_column(col, justify="right", no_wrap=True)
    cells = []
    for r in rows:
        values = [
            r.theta,
            *(r.schedule.get(k, math.nan) for k in learnt),
            r.weight_norm,
            r.projection,
            r.lie,
            r.discrete,
        ]
        cells.append([f"{v:.3g}" for v in values])
        calls = str(r.calls) if r.calls == 1 else f"[bold red]{r.calls}[/]"
        layout = f" {r.layout}" if r.layout else ""  # a VN site's feature layout, as found at its calls
        table.add_row(r.path, ops[len(cells) - 1], f"{r.rep_in} → {r.rep_out}{layout}", *cells[-1], calls)
    whole = [[r.path for r in rows], ops, *zip(*cells), [str(r.calls) for r in rows]]  # columns never cut
    headers = ["site", "op", *numbers, "calls"]
    needed = sum(max(map(len, [h, *col])) for h, col in zip(headers, whole)) + 16 + 3 * (len(headers) + 1) + 1
    if needed <= out.width:
        out.print(table)
        return
    out.print("relaxed sites (‖Bx‖, Lie, discrete: on validation inputs)", highlight=False)
    for r, values in zip(rows, cells):
        out.print(f"{r.path}  {r.op.rsplit('.', 1)[-1]}  calls {r.calls}", highlight=False)
        out.print(f"  {r.rep_in} → {r.rep_out}" + (f" {r.layout}" if r.layout else ""), highlight=False)
        out.print("  " + "  ".join(f"{name} {v}" for name, v in zip(numbers, values)), highlight=False)


# -- reading checkpoints: the trust boundary (see relaxcli.recipe.trust) ------------------------------------------
_TRUST_HELP = (
    "Trust the checkpoint's stored recipe: build the components it names even off relax's allowlist (your "
    "own model class). Only for a file you trust; see 'Security' in the README."
)
_RECIPE_HELP = (
    "Rebuild the model from this recipe (yours, trusted) instead of the checkpoint's stored one; its model "
    "must fit the checkpoint's tensors."
)


def _own_recipe(path: Optional[Path]) -> Any:
    """The user's own recipe for ``--recipe`` (trusted, like a recipe given to ``relax train``), or None."""
    if path is None:
        return None
    from .recipe import load_recipe

    return load_recipe(path)


# -- project -----------------------------------------------------------------------------------------------------
def _positive_finite(value: Optional[float]) -> Optional[float]:
    """``--tolerance``: a positive finite number (a NaN or infinite tolerance would accept any model)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(
            f"{value} is not a positive finite number; give the largest relative equivariance "
            "error to accept, e.g. --tolerance 1e-5"
        )
    return value


@app.command(short_help="Strip the branches, verify, write the weights.")
@_user_errors
def project(
    checkpoint: Annotated[Path, typer.Argument(help="A relaxed checkpoint written by 'relax train'.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output safetensors file.")] = None,
    tolerance: Annotated[
        Optional[float],
        typer.Option(
            help="Max relative equivariance error, max |f(g·x) − g·f(x)| / max |g·f(x)| (default 1e-5 for float32 "
            "recipes, 1e-10 for float64); the absolute error is shown beside it.",
            callback=_positive_finite,
        ),
    ] = None,
    trials: Annotated[int, typer.Option(help="Random group elements per case.", min=1)] = 3,
    samples: Annotated[int, typer.Option(help="Validation samples used for the check.", min=1)] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    skip_verify: Annotated[bool, typer.Option("--skip-verify", help="Write without checking equivariance.")] = False,
    keep_gamma: Annotated[
        bool,
        typer.Option(
            "--keep-gamma",
            help="Keep the branches with their learnt γ "
            "(ace_elastic): write the approximately equivariant relaxed model, "
            "which relaxcli.load_model rebuilds; its error is reported, not "
            "enforced.",
        ),
    ] = False,
    trust_recipe: Annotated[bool, typer.Option("--trust-recipe", help=_TRUST_HELP)] = False,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help=_RECIPE_HELP)] = None,
) -> None:
    """Strip the branches, verify equivariance, write the user's state_dict (exactly its keys) as safetensors."""
    from .run.deliver import project_checkpoint

    path, report, program = project_checkpoint(
        checkpoint,
        output,
        tolerance=tolerance,
        trials=trials,
        samples=samples,
        verify=not skip_verify,
        overwrite=overwrite,
        keep_gamma=keep_gamma,
        trust=trust_recipe,
        recipe=_own_recipe(recipe),
    )
    if report is None:
        err.print("warning: equivariance was not verified (--skip-verify)", highlight=False)
    elif keep_gamma:
        out.print(
            f"relaxed model kept (γ as learnt): relative equivariance error {report.relative:.2e} "
            f"(absolute {report.absolute:.2e}); tested {report.describe()}",
            highlight=False,
        )
    else:
        out.print(
            f"projected model is equivariant: relative error {report.relative:.2e} "
            f"(absolute {report.absolute:.2e}); tested {report.describe()}",
            highlight=False,
        )
    out.print(f"wrote {path}", highlight=False)
    if program is not None:
        out.print(f"wrote {program} (the projected torch.export program)", highlight=False)


# -- export ------------------------------------------------------------------------------------------------------
@app.command(short_help="Write a projected checkpoint as a .pt2 program.")
@_user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A projected checkpoint written by 'relax project'.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .pt2 file.")] = None,
    samples: Annotated[
        int, typer.Option(help="Validation samples used to trace and to check the program.", min=1)
    ] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    trust_recipe: Annotated[bool, typer.Option("--trust-recipe", help=_TRUST_HELP)] = False,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help=_RECIPE_HELP)] = None,
) -> None:
    """Write a projected checkpoint as a torch.export program (.pt2) with a symbolic batch dimension."""
    from .run.deliver import export_checkpoint_file

    path = export_checkpoint_file(
        checkpoint, output, samples=samples, overwrite=overwrite, trust=trust_recipe, recipe=_own_recipe(recipe)
    )
    out.print(f"wrote {path} (checked: it reproduces the model on {samples} validation samples)", highlight=False)


# -- inspect -----------------------------------------------------------------------------------------------------
@app.command(short_help="Per-site and whole-model equivariance error.")
@_user_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="A recipe (.yaml), a relaxed or a projected checkpoint.")],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="KEY=VALUE overrides of a recipe, as for 'relax train'.", metavar="KEY=VALUE"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    tolerance: Annotated[
        Optional[float],
        typer.Option(
            help="Exit 3 if the model's relative equivariance error (max |f(g·x) − g·f(x)| / max |g·f(x)|) exceeds "
            "it; the absolute error is shown beside it.",
            callback=_positive_finite,
        ),
    ] = None,
    trials: Annotated[int, typer.Option(help="Random group elements per case.", min=1)] = 3,
    samples: Annotated[int, typer.Option(help="Validation samples used.", min=1)] = 16,
    trust_recipe: Annotated[bool, typer.Option("--trust-recipe", help=_TRUST_HELP)] = False,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help=_RECIPE_HELP)] = None,
) -> None:
    """Per-site branch norms and whole-model equivariance error of a recipe's model or a checkpoint."""
    from .errors import EquivarianceError
    from .run.inspect import inspect_path

    report = inspect_path(
        model, samples=samples, trials=trials, trust=trust_recipe, recipe=_own_recipe(recipe), overrides=overrides
    )
    if as_json:
        from .run.runlog import strict_json

        out.print_json(strict_json(report.to_dict()))  # null (with "null_reasons") where a number is not finite
    else:
        out.print(
            f"{report.source}: {report.kind} {report.model}" + (f", graph pass: {report.mode}" if report.mode else ""),
            highlight=False,
        )
        if report.sites:
            _site_table(report.sites)
        if report.equivariance:
            table = Table(title="whole-model equivariance error")
            for col in ("model", "relative", "absolute", "cases (absolute)"):
                table.add_column(col)
            for name, r in report.equivariance.items():
                label = name if name != "projected" else "projected (θ=0)"
                table.add_row(
                    label,
                    f"{r.relative:.2e}",
                    f"{r.absolute:.2e}",
                    ", ".join(f"{k}{_times(r, k)} {v:.1e}" for k, v in r.cases.items()),
                )
            out.print(table)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False)
    if tolerance is not None and report.equivariance and not report.passes(tolerance):  # NaN fails
        raise EquivarianceError(
            f"{report.source}: relative equivariance error {report.worst():.3e} exceeds the "
            f"tolerance {tolerance:.1e} or is not finite"
        )


def _times(report: Any, case: str) -> str:
    """`` ×3`` after a case tried on 3 group elements; nothing for an element of a finite group (a case each)."""
    return "" if report.finite_group is not None else f" ×{report.elements.get(case, 0)}"


# -- plot --------------------------------------------------------------------------------------------------------
@app.command(short_help="Overlay runs (validation, test) in one PNG.")
@_user_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (written by 'relax train').", metavar="RUN...")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The PNG to write.")] = Path("compare.png"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Overlay runs in one figure: each run's validation loss of the projected (solid) and relaxed (dashed) model,
    its test result, and its training loss; e.g. a relaxed run and its standard twin."""
    from .run.reports import write_comparison
    from .run.runlog import MetricsLog

    loaded = []
    for run in runs:
        log = run / "metrics.jsonl"
        if not log.is_file():
            raise RelaxError(
                f"{run} is not a run directory (it has no metrics.jsonl); give directories written by 'relax train'"
            )
        loaded.append((run.name, MetricsLog.read(log)))
    if output.exists() and not overwrite:
        raise RelaxError(f"{output} already exists; pass -o with another path, or --overwrite to replace it")
    out.print(f"wrote {write_comparison(loaded, output)}", highlight=False)


# -- compare -----------------------------------------------------------------------------------------------------
@app.command(short_help="Train variants of a recipe over seeds; does relaxation help?")
@_user_errors
def compare(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML.", metavar="RECIPE")],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="KEY=VALUE overrides for every variant, e.g. trainer.epochs=100.", metavar="KEY=VALUE"),
    ] = None,
    variant: Annotated[
        Optional[list[str]],
        typer.Option(
            "--variant",
            help="A variant: NAME=OVERRIDE[,OVERRIDE...], e.g. ace=relax.theta.schedule=ace (repeat for more). "
            "'standard' (relax.enabled=false) and 'recipe' (as written) are always compared too.",
            metavar="NAME=OVERRIDES",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per variant: seed=0 .. N-1.", min=1)] = 3,
    jobs: Annotated[int, typer.Option(help="Runs side by side, each in its own process.", min=1)] = 1,
    threads: Annotated[
        Optional[int],
        typer.Option(
            help="CPU threads for all jobs together, split between them (default: the recipe's trainer.threads, "
            "else the CPU count).",
            min=1,
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: runs/, logs/, table.md, table.csv, summary.json.")
    ] = Path("compare"),
    no_standard: Annotated[bool, typer.Option("--no-standard", help="Leave out the 'standard' variant.")] = False,
    no_recipe: Annotated[bool, typer.Option("--no-recipe", help="Leave out the 'recipe' variant.")] = False,
    metric: Annotated[
        str, typer.Option(help="The summary.json key compared at matched steps (accuracies: higher is better).")
    ] = "test_projected",
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Train runs that failed in an earlier compare again.")
    ] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Train nothing; compare the runs already in --out.")
    ] = False,
    equivariance: Annotated[
        bool,
        typer.Option(
            "--equivariance/--no-equivariance", help="Measure the projected equivariance error of each best checkpoint."
        ),
    ] = True,
) -> None:
    """Train every variant for every seed (fresh 'relax train' processes; finished runs are skipped, killed ones
    resumed), then compare them: OUT/table.md, table.csv, summary.json and compare.png."""
    from .run import compare as cmp

    common = list(overrides or [])
    cmp._no_seed(common, "override")
    variants = cmp.variants_to_compare(variant or [], standard=not no_standard, recipe=not no_recipe)
    if not recipe.is_file():
        raise RelaxError(f"recipe {recipe} does not exist (or is not a file); give a recipe YAML")
    specs = cmp.plan(out_dir, variants, seeds)
    if not report_only:
        from .recipe import load_recipe

        total = threads or load_recipe(recipe, common).trainer.threads or os.cpu_count() or 1
        echo = functools.partial(err.print, highlight=False, markup=False)
        status = cmp.run_all(
            specs, recipe, common, jobs=jobs, threads=total, out=out_dir, retry_failed=retry_failed, echo=echo
        )
    result = cmp.report(specs, recipe, common, out=out_dir, metric=metric, equivariance=equivariance)
    out.print(result.markdown, markup=False, highlight=False)
    out.print("wrote " + ", ".join(str(p) for p in result.files), highlight=False)
    if not report_only:
        failed = [name for name, s in status.items() if s in ("failed", "killed")]
        if failed:
            raise RelaxError(
                f"{len(failed)} of {len(specs)} runs did not finish ({', '.join(failed)}); the table leaves them "
                f"out. Their logs are in {out_dir / 'logs'}; a killed run is resumed by running the same compare "
                "again, a failed one with --retry-failed."
            )


# -- recipes -----------------------------------------------------------------------------------------------------
def _builtin_recipes() -> dict[str, Path]:
    folder = resources.files("relaxcli") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


@app.command(short_help="List the built-in recipes, or copy one here.")
@_user_errors
def recipes(
    name: Annotated[Optional[str], typer.Argument(help="Copy this built-in recipe into the current directory.")] = None,
) -> None:
    """List the built-in recipes, or copy one into the current directory."""
    found = _builtin_recipes()
    if name is None:
        table = Table(title="built-in recipes (relax recipes NAME copies one here)")
        table.add_column("name")
        table.add_column("description")
        for key in sorted(found):
            first = found[key].read_text().splitlines()[0].lstrip("# ").strip()
            table.add_row(key, first)
        out.print(table)
        return
    key = name.removesuffix(".yaml")
    if key not in found:
        import difflib

        close = difflib.get_close_matches(key, found, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RelaxError(f"no built-in recipe '{name}'{hint} Available: {', '.join(sorted(found))}")
    dest = Path.cwd() / f"{key}.yaml"
    if dest.exists():
        raise RelaxError(f"{dest} already exists; not overwriting it")
    from .run.files import atomic_write

    atomic_write(dest, found[key].read_bytes())
    out.print(f"wrote {dest}", highlight=False)


# -- entry point -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``--debug`` anywhere on the command line shows tracebacks."""
    global _debug, _argv
    args = list(sys.argv[1:] if argv is None else argv)
    _debug, _argv = "--debug" in args, args
    if "" not in sys.path and os.getcwd() not in sys.path:  # recipe components import from here, as `python -m` does
        sys.path.insert(0, os.getcwd())
    app(args=[a for a in args if a != "--debug"], prog_name="relax")
