"""The ``relax`` command: ``train``, ``project``, ``inspect`` and ``recipes``.

Errors that a user can fix are printed as one paragraph on stderr with a non-zero exit code (2: bad recipe or
arguments, 3: not equivariant, 1: anything else); ``--debug`` anywhere on the command line adds the traceback.

Example:
    $ relax train recipes/nbody_relaxed.yaml trainer.epochs=5
    $ relax project runs/nbody-relaxed-20261122-120000/checkpoints/best.safetensors
    $ relax inspect runs/nbody-relaxed-20261122-120000/checkpoints/best.projected.safetensors --tolerance 1e-6
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import RelaxError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Constraint relaxation for equivariant networks: train relaxed, project back, inspect.")
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)  # tables stay whole in files and pipes
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
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error (anywhere on the command "
                                                        "line).")] = False,
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
            err.print(f"{_rank_prefix()}error: {type(e).__name__}: {e}\n(re-run with --debug for the traceback)",
                      highlight=False, markup=False)
            raise typer.Exit(1) from None

    return wrapper


def _rank_prefix() -> str:
    """``"rank N: "`` in the processes of a torchrun job other than rank 0 (which speaks for the job)."""
    rank = os.environ.get("RANK", "0")
    return "" if rank == "0" else f"rank {rank}: "


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


# -- train -------------------------------------------------------------------------------------------------------
def _new_run_dir(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{name}-{stamp}"
    k = 1
    while run_dir.exists():
        run_dir = root / f"{name}-{stamp}-{k}"
        k += 1
    return run_dir


@app.command()
@_user_errors
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="The recipe YAML (not needed with --resume).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="KEY=VALUE overrides, e.g. trainer.epochs=5.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<name>-<time>).")] = None,
    runs_root: Annotated[Path, typer.Option(help="Where new run directories go.")] = Path("runs"),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --run-dir.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build, relax, run one step, show the sites, exit.")]
    = False,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress",
                                                     help="Live progress on stderr (default: on a terminal).")] = None,
    nproc: Annotated[int, typer.Option(help="Train data-parallel in this many processes on this machine (launches "
                                            "torchrun; one GPU each on CUDA).", min=1)] = 1,
) -> None:
    """Train the recipe's model (relaxed unless relax.enabled is false); validation reports the projected model."""
    from .recipe import dump_recipe, load_recipe
    from .run.distributed import init_from_env
    from .run.trainer import Trainer

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc)
    if resume is not None:
        if recipe is not None or overrides:
            raise RelaxError("--resume continues a run exactly as it was recorded: give only the run directory, "
                             f"e.g. 'relax train --resume {resume}' (no recipe, no overrides)")
        if not (resume / "recipe.yaml").is_file():
            raise RelaxError(f"{resume} is not a run directory: it has no recipe.yaml")
        rec = load_recipe(resume / "recipe.yaml")
        dist = init_from_env(rec.trainer.device)
        trainer = Trainer(rec, resume, resume=True, progress=progress)
        if dist.is_main:
            err.print(f"resuming {resume} at epoch {trainer.epoch}, step {trainer.step}", highlight=False)
        _finish(_announce(trainer))
        return
    if recipe is None:
        raise RelaxError("give a recipe, e.g. 'relax train recipes/nbody_relaxed.yaml' (see 'relax recipes'), or "
                         "--resume RUN_DIR")
    rec = load_recipe(recipe, overrides or [])
    if print_config:
        out.print(dump_recipe(rec), end="", markup=False, highlight=False)
        return
    if dry_run:
        _dry_run(rec)
        return
    dist = init_from_env(rec.trainer.device)
    if dist.is_main:  # rank 0 prepares the run directory; under torchrun the others learn its name from rank 0
        run_dir = _prepare_run_dir(run_dir, runs_root, rec.name, overwrite)
        err.print(f"run directory: {run_dir}", highlight=False)
    run_dir = dist.broadcast(run_dir)
    _finish(_announce(Trainer(rec, run_dir, progress=progress)))


def _prepare_run_dir(run_dir: Path | None, runs_root: Path, name: str, overwrite: bool) -> Path:
    """A new, empty run directory: ``run_dir`` if given (emptied with ``overwrite``), else a fresh name."""
    if run_dir is None:
        run_dir = _new_run_dir(runs_root, name)
    elif run_dir.is_file():
        raise RelaxError(f"--run-dir {run_dir} is a file; give a directory")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RelaxError(f"run directory {run_dir} exists and is not empty; choose another --run-dir, or pass "
                             "--overwrite to replace it")
        if not (run_dir / "recipe.yaml").is_file():
            raise RelaxError(f"refusing to delete {run_dir} for --overwrite: it is not a relax run directory (it has "
                             "no recipe.yaml); choose another --run-dir")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "relaxcli", *args]
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
        err.print(f"warning: the last batch of each epoch ({trainer.dropped_items} items) is smaller than the "
                  f"{trainer.dist.world} processes and is skipped", highlight=False)
    r = trainer.relaxed
    if r is None:
        err.print("standard training (relax.enabled is false)", highlight=False)
        return trainer
    reason = f"; {r.fallback_reason}" if r.mode == "hooks" and r.fallback_reason else ""
    fused = sum(s.fused for s in r.sites)
    fused_note = f" ({fused} fused with their op)" if fused else ""
    err.print(f"relaxed {len(r.sites)} sites{fused_note}, graph pass: {r.mode}{reason}", highlight=False)
    for path, n in trainer.site_calls().items():
        if n != 1:
            err.print(f"warning: site {path} fired {n} times in one forward pass"
                      + (" (bypassed: its branch is never used)" if n == 0 else " (a shared module)"),
                      highlight=False)
    return trainer


def _print_summary(s: dict[str, Any]) -> None:
    kind = "relaxed" if s["relaxed"] else "standard"
    out.print(f"{s['name']} ({kind} training, seed {s['seed']}): best epoch {s['best_epoch']}, "
              f"val (projected) {_fmt(s['val_projected'])}, test (projected) {_fmt(s['test_projected'])}"
              + (f", test (relaxed) {_fmt(s['test_relaxed'])}" if s["test_relaxed"] is not None else ""),
              highlight=False)
    for key in s:  # the recipe's trainer.metrics, e.g. test_projected_accuracy
        if key.startswith("test_projected_") and s[key] is not None:
            name = key.removeprefix("test_projected_")
            relaxed = s.get(f"test_relaxed_{name}")
            out.print(f"test {name} (projected) {_fmt(s[key])}"
                      + (f", (relaxed) {_fmt(relaxed)}" if relaxed is not None else ""), highlight=False)
    if "best_relaxed_checkpoint" in s:
        out.print(f"relaxed model with γ kept: best epoch {s['best_relaxed_epoch']}, val {_fmt(s['val_relaxed'])}, "
                  f"test {_fmt(s['test_relaxed_kept'])}", highlight=False)
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
        step, _ = trainer.dry_run()
        out.print(f"{rec.name}: one training step ok: loss {step['loss']:.4g} (task {step['task']:.4g}); "
                  f"{trainer.steps_per_epoch} steps per epoch, {trainer.total_steps} steps in all", highlight=False)
        if trainer.relaxed is None:
            out.print("relax.enabled is false: standard training, no sites", highlight=False)
            return
        out.print(f"graph pass: {trainer.relaxed.mode}"
                  + (f" ({trainer.relaxed.fallback_reason})" if trainer.relaxed.fallback_reason else ""),
                  highlight=False)
        _site_table(site_rows(trainer.relaxed, example_inputs(rec, 4)))


def _site_table(rows: list[Any]) -> None:
    from .run.runlog import symbol

    learnt = list(dict.fromkeys(k for r in rows for k in r.schedule))  # a learnt schedule's own numbers (ACE: λ, u)
    table = Table(title="relaxed sites")
    columns = ["site", "op", "in", "out", "γ" if learnt else "θ", *map(symbol, learnt), "‖B‖", "proj. norm", "Lie deriv.",
               "discrete", "calls"]
    for col in columns:
        table.add_column(col, justify="right" if col not in ("site", "op", "in", "out") else "left")
    for r in rows:
        own = [f"{r.schedule[k]:.3g}" if k in r.schedule else "-" for k in learnt]
        table.add_row(r.path, r.op.rsplit(".", 1)[-1], r.rep_in, r.rep_out, f"{r.theta:.3g}", *own,
                      f"{r.weight_norm:.3g}", f"{r.projection:.3g}", f"{r.lie:.3g}", f"{r.discrete:.3g}",
                      str(r.calls) if r.calls == 1 else f"[bold red]{r.calls}[/]")
    out.print(table)


# -- project -----------------------------------------------------------------------------------------------------
@app.command()
@_user_errors
def project(
    checkpoint: Annotated[Path, typer.Argument(help="A relaxed checkpoint written by 'relax train'.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output safetensors file.")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Max relative equivariance error (default 1e-5 for "
                                                            "float32 recipes, 1e-10 for float64).")] = None,
    trials: Annotated[int, typer.Option(help="Random group elements per case.")] = 3,
    samples: Annotated[int, typer.Option(help="Validation samples used for the check.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    skip_verify: Annotated[bool, typer.Option("--skip-verify", help="Write without checking equivariance.")]
    = False,
    keep_gamma: Annotated[bool, typer.Option("--keep-gamma", help="Keep the branches with their learnt γ "
                                             "(ace_elastic): write the approximately equivariant relaxed model, "
                                             "which relaxcli.load_model rebuilds; its error is reported, not "
                                             "enforced.")] = False,
) -> None:
    """Strip the branches, verify equivariance, write the user's state_dict (exactly its keys) as safetensors."""
    from .run.deliver import project_checkpoint

    path, report, program = project_checkpoint(checkpoint, output, tolerance=tolerance, trials=trials,
                                               samples=samples, verify=not skip_verify, overwrite=overwrite,
                                               keep_gamma=keep_gamma)
    if report is None:
        err.print("warning: equivariance was not verified (--skip-verify)", highlight=False)
    elif keep_gamma:
        out.print(f"relaxed model kept (γ as learnt): relative equivariance error {report.relative:.2e} "
                  f"(absolute {report.absolute:.2e})", highlight=False)
    else:
        out.print(f"projected model is equivariant: relative error {report.relative:.2e} "
                  f"(absolute {report.absolute:.2e})", highlight=False)
    out.print(f"wrote {path}", highlight=False)
    if program is not None:
        out.print(f"wrote {program} (the projected torch.export program)", highlight=False)


# -- export ------------------------------------------------------------------------------------------------------
@app.command()
@_user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A projected checkpoint written by 'relax project'.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .pt2 file.")] = None,
    samples: Annotated[int, typer.Option(help="Validation samples used to trace and to check the program.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Write a projected checkpoint as a torch.export program (.pt2) with a symbolic batch dimension."""
    from .run.deliver import export_checkpoint_file

    path = export_checkpoint_file(checkpoint, output, samples=samples, overwrite=overwrite)
    out.print(f"wrote {path} (checked: it reproduces the model on {samples} validation samples)", highlight=False)


# -- inspect -----------------------------------------------------------------------------------------------------
@app.command()
@_user_errors
def inspect(
    model: Annotated[Path, typer.Argument(help="A recipe (.yaml), a relaxed or a projected checkpoint.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    tolerance: Annotated[Optional[float], typer.Option(help="Exit 3 if the model's relative error exceeds it.")]
    = None,
    trials: Annotated[int, typer.Option(help="Random group elements per case.")] = 3,
    samples: Annotated[int, typer.Option(help="Validation samples used.")] = 16,
) -> None:
    """Per-site branch norms and whole-model equivariance error of a recipe's model or a checkpoint."""
    from .errors import EquivarianceError
    from .run.inspect import inspect_path

    report = inspect_path(model, samples=samples, trials=trials)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        out.print(f"{report.source}: {report.kind} {report.model}"
                  + (f", graph pass: {report.mode}" if report.mode else ""), highlight=False)
        if report.sites:
            _site_table(report.sites)
        if report.equivariance:
            table = Table(title="whole-model equivariance error")
            for col in ("model", "relative", "absolute", "cases (absolute)"):
                table.add_column(col)
            for name, r in report.equivariance.items():
                label = name if name != "projected" else "projected (θ=0)"
                table.add_row(label, f"{r.relative:.2e}", f"{r.absolute:.2e}",
                              ", ".join(f"{k} {v:.1e}" for k, v in r.cases.items()))
            out.print(table)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False)
    if tolerance is not None and report.equivariance and report.worst() > tolerance:
        raise EquivarianceError(f"{report.source}: relative equivariance error {report.worst():.3e} exceeds the "
                                f"tolerance {tolerance:.1e}")


# -- recipes -----------------------------------------------------------------------------------------------------
def _builtin_recipes() -> dict[str, Path]:
    folder = resources.files("relaxcli") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


@app.command()
@_user_errors
def recipes(
    name: Annotated[Optional[str], typer.Argument(help="Copy this built-in recipe into the current directory.")]
    = None,
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
    shutil.copyfile(found[key], dest)
    out.print(f"wrote {dest}", highlight=False)


# -- entry point -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``--debug`` anywhere on the command line shows tracebacks."""
    global _debug, _argv
    args = list(sys.argv[1:] if argv is None else argv)
    _debug, _argv = "--debug" in args, args
    app(args=[a for a in args if a != "--debug"], prog_name="relax")
