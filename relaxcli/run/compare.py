"""``relax compare``: does relaxation help this model? Train variants of one recipe over several seeds, then compare.

A **variant** is a name and a set of ``KEY=VALUE`` overrides of the recipe. ``standard`` (``relax.enabled=false``)
and ``recipe`` (the recipe as written) are included unless told otherwise; a variant the user names ``standard`` or
``recipe`` replaces the built-in one. Every variant is trained for every seed (``seed=0 .. N-1``; the data split is
the recipe's, the same for all) in a fresh ``relax train`` process, ``jobs`` at a time with the CPU threads split
between them (``trainer.threads`` and ``OMP_NUM_THREADS``), each into ``OUT/runs/<variant>-seed<k>``:

- a run whose ``summary.json`` exists (the trainer writes it last, atomically) is finished and is skipped;
- a run killed half-way is continued with ``relax train --resume`` (it ends as an uninterrupted run would);
- a run killed before it wrote its ``recipe.yaml`` is started again (``--overwrite``; only relax's files are there);
- a run that failed (the trainer exited with an error, e.g. a diverged loss) is recorded in
  ``OUT/failed/<run>.json`` and not retried by a later compare unless ``retry_failed``; its log is
  ``OUT/logs/<run>.log``.

A run directory that exists is only reused when its ``recipe.yaml`` is the recipe this compare would train (all keys
but ``trainer.threads``); otherwise compare stops, naming the keys that differ.

**What is compared** (:func:`report`; written to ``OUT/table.md``, ``OUT/table.csv``, ``OUT/summary.json`` and
``OUT/compare.png``):

- *Matched steps* (the final result): per variant the mean ± sample std over seeds of the metric in each run's
  ``summary.json`` (default ``test_projected``: the projected model's test loss at its best projected validation
  epoch, after the same number of steps for every variant); its ratio to the baseline's mean (``standard`` when it
  is compared, else the first variant); and paired wins: in how many seeds, of those where both finished, the variant
  beat the baseline. A metric whose name contains ``accuracy`` is better when higher, any other when lower.
- *Per-step time*: a run's wall-clock seconds per step, the ``time`` of its last training line in ``metrics.jsonl``
  (seconds since the run started, evaluations included, resumed runs counted from where they stopped) divided by
  its steps; the ratio is the variant's mean over seeds to the baseline's. Runs side by side share the CPU, so this is
  a rough cost, not a benchmark (``benchmarks/overhead.py`` is).
- *Matched wall-clock time*: each variant's duration is the median over its seeds of the runs' total time; the
  budget ``T`` is the shortest of these (the fastest variant). Per run, the best projected validation loss
  (``val_projected``) among the evaluations reached by ``T``, where an evaluation after step ``s`` counts as reached
  at the time of step ``s`` (linear between the logged training lines); mean ± std, ratio and paired wins as above.
  The validation loss, not the test metric, because the test split is only evaluated at the best checkpoint.
- *Equivariance*: per variant the largest relative equivariance error ``max|f(g·x) − g·f(x)| / max|g·f(x)|`` over
  its seeds, of the projected model (θ = 0) at each run's best checkpoint, measured here as ``relax inspect`` does
  (16 validation samples, 3 group elements per case); cached in ``OUT/equivariance.json`` by checkpoint (size and
  modification time). A run records no equivariance of its best checkpoint, so it is measured, not read.

Example:
    >>> variants = [STANDARD, RECIPE, parse_variant("ace=relax.theta.schedule=ace")]
    >>> specs = plan(Path("compare/nbody"), variants, seeds=3)
    >>> run_all(specs, Path("nbody.yaml"), ["trainer.epochs=100"], jobs=2, threads=2, out=Path("compare/nbody"))
    >>> result = report(specs, Path("nbody.yaml"), ["trainer.epochs=100"], out=Path("compare/nbody"))
    >>> print(result.markdown)
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError, RelaxError
from .files import atomic_write
from .runlog import MetricsLog, strict_json

__all__ = [
    "Variant",
    "RunSpec",
    "Comparison",
    "STANDARD",
    "RECIPE",
    "parse_variant",
    "variants_to_compare",
    "plan",
    "run_all",
    "report",
    "higher_is_better",
]

#: ``relax.enabled=false``: the standard (unrelaxed) twin of the recipe.
STANDARD_OVERRIDES = ("relax.enabled=false",)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: A comma that starts a new override (``,KEY=``), not one inside a value (``[a,b]``).
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_.\[\]-]*=)")


@dataclass(frozen=True)
class Variant:
    """A named set of overrides of the recipe.

    Example:
        >>> Variant("ace", ("relax.theta.schedule=ace",)).name
        'ace'
    """

    name: str
    overrides: tuple[str, ...] = ()

    def describe(self) -> str:
        return ", ".join(self.overrides) if self.overrides else "(the recipe as written)"


STANDARD = Variant("standard", STANDARD_OVERRIDES)
RECIPE = Variant("recipe", ())


def parse_variant(text: str) -> Variant:
    """``NAME=OVERRIDE[,OVERRIDE...]`` as a :class:`Variant`; a comma inside a value (``symmetry.inputs=[a,b]``)
    stays in it, because only a comma followed by ``KEY=`` starts a new override. ``NAME=`` alone is the recipe as
    written under another name.

    Raises:
        RecipeError: no name, a name with characters other than letters, digits and ``_.+-``, an override without
            ``=``, or an override of ``seed`` (compare sets the seed of every run).

    Example:
        >>> parse_variant("small=relax.theta.max=0.2,relax.regularizer.weight=0.1").overrides
        ('relax.theta.max=0.2', 'relax.regularizer.weight=0.1')
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.match(name):
        raise RecipeError(
            [
                f"--variant {text!r}: expected NAME=OVERRIDE[,OVERRIDE...], e.g. --variant "
                "ace=relax.theta.schedule=ace; NAME is letters, digits and _.+- (it names the run directories)"
            ],
            source="the command line",
        )
    overrides = tuple(o.strip() for o in _SPLIT.split(rest) if o.strip()) if rest.strip() else ()
    for o in overrides:
        if "=" not in o:
            raise RecipeError(
                [f"--variant {name}: override {o!r} is not KEY=VALUE (e.g. relax.theta.max=0.2)"],
                source="the command line",
            )
    _no_seed(overrides, f"--variant {name}")
    return Variant(name, overrides)


def _no_seed(overrides: Sequence[str], where: str) -> None:
    for o in overrides:
        if o.partition("=")[0].strip() == "seed":
            raise RecipeError(
                [
                    f"{where}: override {o!r} sets the seed, which compare sets for every run "
                    "(seed=0 .. N-1); use --seeds"
                ],
                source="the command line",
            )


def variants_to_compare(given: Sequence[str], standard: bool = True, recipe: bool = True) -> list[Variant]:
    """The variants to train: ``standard`` and ``recipe`` (unless switched off), then those ``given`` as
    ``NAME=OVERRIDES`` (see :func:`parse_variant`); a given variant named ``standard`` or ``recipe`` replaces the
    built-in one.

    Raises:
        RecipeError: a name given twice, or nothing to compare.

    Example:
        >>> [v.name for v in variants_to_compare(["ace=relax.theta.schedule=ace"])]
        ['standard', 'recipe', 'ace']
    """
    parsed = [parse_variant(t) for t in given]
    names = [v.name for v in parsed]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError([f"--variant {', '.join(twice)} is given more than once"], source="the command line")
    out = [v for v, on in ((STANDARD, standard), (RECIPE, recipe)) if on and v.name not in names]
    out += parsed
    if not out:
        raise RecipeError(
            ["nothing to compare: --no-standard and --no-recipe leave no variant; add one with --variant"],
            source="the command line",
        )
    return out


@dataclass(frozen=True)
class RunSpec:
    """One run of a compare: a variant at a seed, in ``path``."""

    variant: Variant
    seed: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def overrides(self, common: Sequence[str], threads: int | None = None) -> list[str]:
        """The run's overrides: the common ones, the variant's (which win), its seed and its threads."""
        extra = [f"trainer.threads={threads}"] if threads else []
        return [*common, *self.variant.overrides, f"seed={self.seed}", *extra]


def plan(out: Path, variants: Sequence[Variant], seeds: int) -> list[RunSpec]:
    """Every variant at seeds ``0 .. seeds-1``, seed by seed (so the first runs to finish are paired).

    Example:
        >>> [s.name for s in plan(Path("out"), [STANDARD, RECIPE], 2)]
        ['standard-seed0', 'recipe-seed0', 'standard-seed1', 'recipe-seed1']
    """
    return [RunSpec(v, k, out / "runs" / f"{v.name}-seed{k}") for k in range(seeds) for v in variants]


# -- training ----------------------------------------------------------------------------------------------------
def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete ``summary.json`` (the trainer writes it last, atomically)."""
    summary = _read_json(run_dir / "summary.json")
    return isinstance(summary, dict) and "steps" in summary and "val_projected" in summary


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _comparable(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A flat copy of a resolved recipe without the keys that may differ between invocations (``trainer.threads``)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = value

    walk(recipe, "")
    flat.pop("trainer.threads", None)
    return flat


def _with_defaults(found: Mapping[str, Any]) -> Any:
    """A run's stored recipe with the keys a later relax added filled in with their defaults (which keep the old
    behaviour), so that an upgrade alone does not make a finished run look different; as stored if it does not
    validate here (trust is not extended to a file: a component off the allowlist leaves it as stored)."""
    import yaml

    from ..recipe import dump_recipe
    from ..recipe.validate import recipe_from_dict

    try:
        return yaml.safe_load(dump_recipe(recipe_from_dict(found, "recipe.yaml", trust=False)))
    except RelaxError:
        return found


def _check_same_recipe(spec: RunSpec, expected: Mapping[str, Any]) -> None:
    import yaml

    try:
        found = yaml.safe_load((spec.path / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RelaxError(f"cannot read {spec.path / 'recipe.yaml'} ({e}); move {spec.path} out of the way") from None
    a, b = _comparable(_with_defaults(found) if isinstance(found, Mapping) else {}), _comparable(expected)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if differ:
        shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise RelaxError(
            f"{spec.path} was trained with a different recipe than variant {spec.variant.name!r} at seed "
            f"{spec.seed} is now ({shown}{more}); a compare reuses a run only when its recipe is the same. Give "
            "another --out, or move that run directory away to train it again."
        )


@dataclass
class _Job:
    spec: RunSpec
    action: str  # fresh | resume | restart
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    started: float = 0.0


def run_all(
    specs: Sequence[RunSpec],
    recipe: Path,
    common: Sequence[str],
    *,
    jobs: int,
    threads: int,
    out: Path,
    retry_failed: bool = False,
    echo: Callable[[str], None] = print,
    poll: float = 0.2,
) -> dict[str, str]:
    """Train every run of ``specs`` that is not finished, ``jobs`` at a time, each in a fresh ``relax train``
    process with ``max(1, threads // jobs)`` CPU threads. Every recipe is validated first (a bad override stops
    compare before anything is trained). Returns each run's status: ``finished`` (before this call), ``trained``,
    ``failed`` (recorded in ``OUT/failed``) or ``killed`` (the process ended by a signal; resumed next time).

    Raises:
        RecipeError: a variant's overrides do not make a valid recipe.
        RelaxError: an existing run directory holds another recipe, or another process is training it.

    Example:
        >>> run_all(plan(out, variants, 2), Path("nbody.yaml"), [], jobs=2, threads=2, out=out)
        {'standard-seed0': 'trained', 'recipe-seed0': 'trained', ...}
    """
    import yaml

    from ..recipe import dump_recipe, load_recipe
    from . import rundir

    per_job = max(1, threads // max(1, jobs))
    status: dict[str, str] = {}
    pending: list[_Job] = []
    for spec in specs:
        rec = load_recipe(recipe, spec.overrides(common, per_job))  # RecipeError (exit 2) names the variant's key
        failed = out / "failed" / f"{spec.name}.json"
        if is_finished(spec.path):
            _check_same_recipe(spec, yaml.safe_load(dump_recipe(rec)))
            status[spec.name] = "finished"
            echo(f"{spec.name}: finished, skipped")
            continue
        if failed.is_file() and not retry_failed:
            status[spec.name] = "failed"
            echo(f"{spec.name}: failed before ({failed}), skipped; --retry-failed trains it again")
            continue
        if spec.path.exists() and (spec.path / "recipe.yaml").is_file():
            _check_same_recipe(spec, yaml.safe_load(dump_recipe(rec)))
            action = "resume"
        elif spec.path.exists():
            action = "restart"  # killed before it began training: nothing but relax's marker and lock there
        else:
            action = "fresh"
        if spec.path.exists():
            rundir.lock(spec.path).release()  # RelaxError naming the pid when a process still trains it
        failed.unlink(missing_ok=True)
        pending.append(_Job(spec, action))

    env = {**os.environ, **{k: str(per_job) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: list[_Job] = []
    total = len(pending)
    done = 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                job = pending.pop(0)
                _start(job, recipe, common, per_job, out, env)
                running.append(job)
                echo(f"{job.spec.name}: {_VERBS[job.action]} ({len(running)} running, {len(pending)} waiting)")
            time.sleep(poll)
            for job in [j for j in running if j.proc is not None and j.proc.poll() is not None]:
                running.remove(job)
                done += 1
                status[job.spec.name] = _finish(job, out, echo, f"[{done}/{total}]")
    finally:
        for job in running:  # interrupted (Ctrl-C): stop the runs; a later compare resumes them
            if job.proc is not None and job.proc.poll() is None:
                job.proc.terminate()
                try:
                    job.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
            if job.log is not None:
                job.log.close()
    return status


_VERBS = {"fresh": "training", "resume": "resuming (killed half-way before)", "restart": "training again"}


def _start(job: _Job, recipe: Path, common: Sequence[str], threads: int, out: Path, env: dict[str, str]) -> None:
    spec = job.spec
    cmd = [sys.executable, "-m", "relaxcli", "train"]
    if job.action == "resume":
        # the run's recipe.yaml was checked to be this compare's (trusted) recipe, so it may name the user's classes
        cmd += ["--resume", str(spec.path), "--trust-recipe"]
    else:
        cmd += [str(recipe), *spec.overrides(common, threads), "--run-dir", str(spec.path)]
        if job.action == "restart":
            cmd.append("--overwrite")
    cmd.append("--no-progress")
    job.log = (out / "logs" / f"{spec.name}.log").open("ab")
    job.log.write(f"$ {' '.join(cmd)}\n".encode())
    job.log.flush()
    job.started = time.time()
    job.proc = subprocess.Popen(cmd, stdout=job.log, stderr=subprocess.STDOUT, env=env)


def _finish(job: _Job, out: Path, echo: Callable[[str], None], count: str) -> str:
    assert job.proc is not None
    job.log.close()
    rc, spec = job.proc.returncode, job.spec
    seconds = time.time() - job.started
    log = out / "logs" / f"{spec.name}.log"
    if rc == 0 and is_finished(spec.path):
        echo(f"{count} {spec.name}: done in {seconds:.0f} s")
        return "trained"
    if rc < 0:  # ended by a signal (killed): not a failure of the run; the next compare resumes it
        echo(f"{count} {spec.name}: killed by signal {-rc} after {seconds:.0f} s; a later compare resumes it")
        return "killed"
    reason = _last_error(log)
    record = {"run": spec.name, "variant": spec.variant.name, "seed": spec.seed, "exit_code": rc, "error": reason}
    atomic_write(out / "failed" / f"{spec.name}.json", strict_json(record, indent=2) + "\n")
    echo(f"{count} {spec.name}: FAILED (exit {rc}): {reason} (log: {log})")
    return "failed"


def _last_error(log: Path) -> str:
    """The last ``error:`` paragraph of a run's log (what ``relax train`` printed), or its last line."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return " ".join(line.strip() for line in lines[i:])[:500]
    return lines[-1][:500] if lines else "no output"


# -- the comparison ----------------------------------------------------------------------------------------------
def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: accuracies are, losses are not.

    Example:
        >>> higher_is_better("test_projected_accuracy"), higher_is_better("test_projected")
        (True, False)
    """
    return "accuracy" in metric


@dataclass
class _Run:
    spec: RunSpec
    status: str  # finished | failed | missing
    summary: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    metric: float | None = None
    seconds: float | None = None
    steps: int | None = None
    equivariance: float | None = None
    val_at_budget: float | None = None

    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.seconds is not None and self.steps else None

    def time_at(self, step: float) -> float | None:
        """Wall-clock seconds at ``step``, linear between the logged training lines (0 at step 0)."""
        points = [(0.0, 0.0)] + sorted(
            (float(r["step"]), float(r["time"]))
            for r in self.records
            if r.get("kind") == "train" and _finite(r.get("step")) and _finite(r.get("time"))
        )
        for (s0, t0), (s1, t1) in itertools.pairwise(points):
            if s0 <= step <= s1:
                return t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0)
        return None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Comparison:
    """The result of :func:`report`: ``summary`` (what ``summary.json`` holds), the table as ``markdown`` and
    ``rows`` (one dict per variant, the columns of ``table.csv``), and the files written."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    markdown: str
    files: list[Path]


def _load(spec: RunSpec, out: Path, metric: str) -> _Run:
    if not is_finished(spec.path):
        failed = (out / "failed" / f"{spec.name}.json").is_file()
        return _Run(spec, "failed" if failed else "missing")
    summary = _read_json(spec.path / "summary.json")
    records = MetricsLog.read(spec.path / "metrics.jsonl") if (spec.path / "metrics.jsonl").is_file() else []
    run = _Run(spec, "finished", summary, records)
    if metric not in summary:
        known = sorted(k for k in summary if k.startswith(("test_", "val_")))
        raise RelaxError(
            f"--metric {metric!r} is not in {spec.path / 'summary.json'}; the runs record {', '.join(known)}"
        )
    value = summary[metric]
    run.metric = float(value) if _finite(value) else None
    times = [(r["step"], r["time"]) for r in records if r.get("kind") == "train" and _finite(r.get("time"))]
    if times:
        run.steps, run.seconds = int(times[-1][0]), float(times[-1][1])
    return run


def _equivariance(runs: Sequence[_Run], recipe: Path, common: Sequence[str], out: Path) -> None:
    """The projected model's relative equivariance error at each finished run's best checkpoint (cached)."""
    from ..recipe import load_recipe
    from .inspect import inspect_path

    cache_path = out / "equivariance.json"
    cache = _read_json(cache_path) or {}
    changed = False
    for run in runs:
        if run.status != "finished":
            continue
        ckpt = Path(run.summary.get("best_checkpoint") or run.spec.path / "checkpoints" / "best.safetensors")
        if not ckpt.is_file():
            continue
        stat = ckpt.stat()
        key = f"{stat.st_size}:{stat.st_mtime_ns}"
        hit = cache.get(run.spec.name)
        if isinstance(hit, dict) and hit.get("checkpoint") == key:
            run.equivariance = hit.get("relative")
            continue
        rec = load_recipe(recipe, run.spec.overrides(common))  # the user's recipe: trusted, as for relax train
        result = inspect_path(ckpt, recipe=rec).equivariance.get("projected")
        run.equivariance = result.relative if result is not None and math.isfinite(result.relative) else None
        cache[run.spec.name] = {"checkpoint": key, "relative": run.equivariance}
        changed = True
    if changed:
        atomic_write(cache_path, strict_json(cache, indent=2) + "\n")


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _paired(
    runs: Mapping[int, float | None], base: Mapping[int, float | None], higher: bool
) -> tuple[int | None, int | None]:
    """Wins over the baseline and the number of seeds where both have a value."""
    seeds = [k for k in runs if runs[k] is not None and base.get(k) is not None]
    if not seeds:
        return None, None
    wins = sum((runs[k] > base[k]) if higher else (runs[k] < base[k]) for k in seeds)  # type: ignore[operator]
    return wins, len(seeds)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b != 0.0 else None


def report(
    specs: Sequence[RunSpec],
    recipe: Path,
    common: Sequence[str],
    *,
    out: Path,
    metric: str = "test_projected",
    equivariance: bool = True,
    plot: bool = True,
) -> Comparison:
    """Compare the finished runs of ``specs`` (see the module docstring for every number) and write
    ``OUT/table.md``, ``OUT/table.csv``, ``OUT/summary.json`` (strict JSON) and ``OUT/compare.png``. Runs not
    finished are counted as missing or failed and left out of the numbers.

    Example:
        >>> result = report(plan(out, variants, 3), Path("nbody.yaml"), [], out=out)
        >>> result.rows[1]["ratio"]
        0.95
    """
    higher = higher_is_better(metric)
    runs = [_load(s, out, metric) for s in specs]
    if equivariance:
        _equivariance(runs, recipe, common, out)
    variants = list(dict.fromkeys(s.variant for s in specs))
    by_variant = {v.name: [r for r in runs if r.spec.variant == v] for v in variants}
    baseline = "standard" if "standard" in by_variant else variants[0].name

    durations = {
        name: statistics.median(r.seconds for r in rs if r.seconds is not None)
        for name, rs in by_variant.items()
        if any(r.seconds is not None for r in rs)
    }
    budget = min(durations.values()) if durations else None
    if budget is not None:
        for run in runs:
            reached = [
                float(r["val_projected"])
                for r in run.records
                if r.get("kind") == "eval"
                and _finite(r.get("val_projected"))
                and (t := run.time_at(float(r["step"]))) is not None
                and t <= budget * (1 + 1e-9)
            ]
            run.val_at_budget = min(reached) if reached else None

    def per_seed(name: str, attr: str) -> dict[int, float | None]:
        return {r.spec.seed: getattr(r, attr) for r in by_variant[name]}

    base_metric = _mean_std([r.metric for r in by_variant[baseline] if r.metric is not None])[0]
    base_budget = _mean_std([r.val_at_budget for r in by_variant[baseline] if r.val_at_budget is not None])[0]
    base_sps = _mean_std([s for r in by_variant[baseline] if (s := r.seconds_per_step()) is not None])[0]
    rows: list[dict[str, Any]] = []
    for v in variants:
        rs = by_variant[v.name]
        values = [r.metric for r in rs if r.metric is not None]
        mean, std = _mean_std(values)
        wins, paired = _paired(per_seed(v.name, "metric"), per_seed(baseline, "metric"), higher)
        at_budget = [r.val_at_budget for r in rs if r.val_at_budget is not None]
        b_mean, b_std = _mean_std(at_budget)
        b_wins, b_paired = _paired(per_seed(v.name, "val_at_budget"), per_seed(baseline, "val_at_budget"), False)
        sps = _mean_std([s for r in rs if (s := r.seconds_per_step()) is not None])[0]
        errors = [r.equivariance for r in rs if r.equivariance is not None]
        rows.append(
            {
                "variant": v.name,
                "overrides": " ".join(v.overrides),
                "finished": sum(r.status == "finished" for r in rs),
                "failed": sum(r.status == "failed" for r in rs),
                "runs": len(rs),
                "mean": mean,
                "std": std,
                "ratio": _ratio(mean, base_metric),
                "wins": None if v.name == baseline else wins,
                "paired": None if v.name == baseline else paired,
                "seconds_per_step": sps,
                "step_time_ratio": _ratio(sps, base_sps),
                "equivariance_error": max(errors) if errors else None,
                "val_at_budget_mean": b_mean,
                "val_at_budget_std": b_std,
                "val_at_budget_ratio": _ratio(b_mean, base_budget),
                "val_at_budget_wins": None if v.name == baseline else b_wins,
                "val_at_budget_paired": None if v.name == baseline else b_paired,
            }
        )
    summary = {
        "recipe": str(recipe),
        "overrides": list(common),
        "metric": metric,
        "higher_is_better": higher,
        "baseline": baseline,
        "seeds": sorted({s.seed for s in specs}),
        "budget_seconds": budget,
        "variants": rows,
        "runs": {
            r.spec.name: {
                "variant": r.spec.variant.name,
                "seed": r.spec.seed,
                "status": r.status,
                "run_dir": str(r.spec.path),
                "metric": r.metric,
                "steps": r.steps,
                "seconds": r.seconds,
                "seconds_per_step": r.seconds_per_step(),
                "val_projected": r.summary.get("val_projected"),
                "val_at_budget": r.val_at_budget,
                "equivariance_error": r.equivariance,
                "best_epoch": r.summary.get("best_epoch"),
            }
            for r in runs
        },
    }
    markdown = _markdown(summary)
    atomic_write(out / "table.md", markdown)
    atomic_write(out / "summary.json", strict_json(summary, indent=2) + "\n")
    files = [out / "table.md", _write_csv(rows, out / "table.csv"), out / "summary.json"]
    if plot:
        files.append(_plot(runs, variants, budget, metric, out / "compare.png"))
    return Comparison(summary, rows, markdown, files)


def _g(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.5g}" + (f" ± {std:.2g}" if std is not None else "")


def _markdown(s: Mapping[str, Any]) -> str:
    metric, base = s["metric"], s["baseline"]
    lines = [
        f"| variant | runs | {metric} (mean ± std) | / {base} | wins vs {base} | time/step | / {base} "
        f"| equivariance error | best val by {_g(s['budget_seconds'], 3)} s | / {base} | wins vs {base} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["variants"]:
        runs = f"{r['finished']}/{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        wins = "-" if r["wins"] is None else f"{r['wins']} of {r['paired']}"
        bwins = "-" if r["val_at_budget_wins"] is None else f"{r['val_at_budget_wins']} of {r['val_at_budget_paired']}"
        sps = "-" if r["seconds_per_step"] is None else f"{r['seconds_per_step'] * 1000:.3g} ms"
        eq = "-" if r["equivariance_error"] is None else f"{r['equivariance_error']:.1e}"
        lines.append(
            f"| {r['variant']} | {runs} | {_pm(r['mean'], r['std'])} | {_g(r['ratio'])} | {wins} | {sps} "
            f"| {_g(r['step_time_ratio'], 3)} | {eq} | {_pm(r['val_at_budget_mean'], r['val_at_budget_std'])} "
            f"| {_g(r['val_at_budget_ratio'])} | {bwins} |"
        )
    better = "higher" if s["higher_is_better"] else "lower"
    lines += [
        "",
        f"{metric}: from each run's summary.json ({better} is better), at matched steps. Wins: paired seeds where "
        f"the variant beat {base}. Time/step: wall-clock seconds of the run (evaluations included) / steps. "
        "Equivariance error: relative, of the projected model at the best checkpoint, largest over seeds. "
        f"Best val by {_g(s['budget_seconds'], 3)} s: the best projected validation loss reached by the time the "
        "fastest variant finished (median over its seeds).",
        "",
        "variants: " + "; ".join(f"{r['variant']}: {r['overrides'] or '(recipe as written)'}" for r in s["variants"]),
        "",
    ]
    return "\n".join(lines)


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    from .reports import write_csv

    return write_csv(rows, path)


def _plot(runs: Sequence[_Run], variants: Sequence[Variant], budget: float | None, metric: str, path: Path) -> Path:
    """Validation curves per variant (mean over seeds, band from the lowest to the highest seed) against step and
    against wall-clock time, and the metric per seed as paired lines across the variants."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .reports import _log_y, _save, _series, _site_styles

    fig = Figure(figsize=(15.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_step, ax_time, ax_seed = fig.subplots(1, 3)
    for ax in (ax_step, ax_time, ax_seed):
        ax.grid(True, which="major", alpha=0.3)
    values: list[float] = []
    styles = _site_styles(len(variants))
    for v, style in zip(variants, styles):
        curves = []
        for run in (r for r in runs if r.spec.variant == v and r.status == "finished"):
            steps, vals = _series([r for r in run.records if r.get("kind") == "eval"], "val_projected")
            times = [run.time_at(s) for s in steps]
            curves.append({s: (val, t) for s, val, t in zip(steps, vals, times)})
        if not curves:
            continue
        common_steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not common_steps:
            continue
        mean = [statistics.fmean(c[s][0] for c in curves) for s in common_steps]
        low = [min(c[s][0] for c in curves) for s in common_steps]
        high = [max(c[s][0] for c in curves) for s in common_steps]
        ts = [statistics.fmean(c[s][1] or 0.0 for c in curves) for s in common_steps]
        label = f"{v.name} ({len(curves)} seed{'s' * (len(curves) != 1)})"
        for ax, x in ((ax_step, common_steps), (ax_time, ts)):
            ax.plot(x, mean, lw=1.4, color=style["color"], ls=style["ls"], label=label)
            ax.fill_between(x, low, high, color=style["color"], alpha=0.18, lw=0)
        values += low + high
    for ax in (ax_step, ax_time):
        _log_y(ax, values)
        ax.set_ylabel("validation loss (projected)")
    if budget is not None:
        ax_time.axvline(budget, color="k", ls=":", lw=1.0, label=f"fastest variant done ({budget:.3g} s)")
    ax_step.set_xlabel("step")
    ax_step.set_title("Validation, matched steps (band: seeds' range)")
    ax_time.set_xlabel("wall-clock seconds (mean over seeds)")
    ax_time.set_title("Validation, matched wall-clock time")
    ax_step.legend(fontsize="small")
    ax_time.legend(fontsize="small")

    seeds = sorted({r.spec.seed for r in runs})
    names = [v.name for v in variants]
    seed_values: list[float] = []
    for k in seeds:
        ys = [next((r.metric for r in runs if r.spec.seed == k and r.spec.variant == v), None) for v in variants]
        xs = [i for i, y in enumerate(ys) if y is not None]
        ax_seed.plot(xs, [ys[i] for i in xs], color="C7", alpha=0.7, lw=1.0, marker="o", ms=4)
        seed_values += [y for y in ys if y is not None]
    for i, v in enumerate(variants):
        vals = [r.metric for r in runs if r.spec.variant == v and r.metric is not None]
        if vals:
            ax_seed.scatter([i], [statistics.fmean(vals)], marker="_", s=600, color=styles[i]["color"], zorder=5)
    ax_seed.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax_seed.set_xlim(-0.5, len(names) - 0.5)
    ax_seed.set_title(f"{metric} per seed\n(a line per seed; bar: mean)")  # two lines: long metric names fit
    ax_seed.ticklabel_format(axis="y", useOffset=False)
    ax_seed.set_ylabel(metric)
    fig.suptitle("relax compare")
    return _save(fig, path)
