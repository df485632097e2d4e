"""Per-step training-time overhead of relaxation, measured side by side in one process.

For each model two copies with identical initial weights are trained on the same fixed batch:

- **standard**: forward, task loss, backward, Adam step over the user's parameters;
- **relaxed**: ``relaxcli.relax(model)`` with θ from a ``triangle`` schedule, loss = task loss +
  ``Regularizer(weight=0.01)(relaxed).total``, backward, Adam step over the user's and the branches' parameters.

The two are timed **interleaved** in an ABBA pattern (A B B A A B ...), one optimiser step at a time, after a warm-up,
so slow drifts of the machine (frequency, other processes) hit both alike. Reported: the median ms/step of each, the
ratio of the medians, a paired bootstrap 95% interval for that ratio, and the min-of-medians over ``--repeats``
contiguous chunks of the run (robust against a noisy stretch). ``--breakdown`` also times the phases of a step
(forward, regulariser, backward, optimiser) for both variants. By default glibc's allocator is pinned (``mallopt``)
so that large activations are reused rather than mmap'ed and page-faulted afresh each step; without it the VN
step time of *either* variant swings by 1.5-3x between runs (``--malloc default`` to see that).

Models:

- ``nbody``: ``relaxcli.tasks.SEGNN`` (4 layers) on a batch of 100 five-particle systems, widths 16 and 32
  (``16x0e+16x1o``, ``32x0e+32x1o``); MSE loss.
- ``grid``: ``relaxcli.tasks.SteerableCNN`` (escnn, C4, 8 regular fields, three 5x5 ``R2Conv``; relaxed through
  forward hooks) on 16 Allen-Cahn fields of 32x32; MSE loss. Needs the escnn extra.
- ``vn``: the package's ``relaxcli.tasks.VNPointNet`` (64 channels, 3 layers, no k-NN) on ``[32, 512, 3]`` points;
  cross-entropy on random labels. (Before 0.2.0 this benchmark carried its own, smaller VN-PointNet; its ratios in
  ``results/`` are not comparable.)

Example:
    python benchmarks/overhead.py --model all --steps 200 --threads 1 --json overhead.json
    python benchmarks/overhead.py --model vn --rows 256 --source weight --breakdown
    python benchmarks/overhead.py --model vn --no-fuse     # op and branch as two products, for comparison
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import inspect
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import relaxcli
from relaxcli.tasks import SEGNN, VNPointNet


@dataclass
class Case:
    """One benchmark case: a model factory, its (fixed) inputs and target, and the task loss."""

    name: str
    build: Callable[[], nn.Module]
    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def nbody_case(width: int, device: torch.device, seed: int) -> Case:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(100, 5, 3, generator=g)
    vel = torch.randn(100, 5, 3, generator=g)
    charges = torch.randint(0, 2, (100, 5, 1), generator=g).float() * 2 - 1
    target = pos + 0.1 * torch.randn(100, 5, 3, generator=g)
    hidden = f"{width}x0e+{width}x1o"
    return Case(
        f"nbody-{width}",
        lambda: SEGNN(hidden_irreps=hidden, num_layers=4),
        tuple(t.to(device) for t in (pos, vel, charges)),
        target.to(device),
        nn.functional.mse_loss,
        {"hidden_irreps": hidden, "num_layers": 4, "batch": "100 systems x 5 particles"},
    )


def vn_case(device: torch.device, seed: int) -> Case:
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(32, 512, 3, generator=g)
    labels = torch.randint(0, 40, (32,), generator=g)
    return Case(
        "vn-pointnet",
        lambda: VNPointNet(num_classes=40, hidden=64, num_layers=3),
        (points.to(device),),
        labels.to(device),
        nn.functional.cross_entropy,
        {"model": "relaxcli.tasks.VNPointNet", "hidden": 64, "num_layers": 3, "batch": "32 clouds x 512 points"},
    )


def grid_case(device: torch.device, seed: int) -> Case:
    from relaxcli.tasks import AllenCahnData, SteerableCNN

    data = AllenCahnData(train=16, val=1, test=1, size=32, seed=seed)
    return Case(
        "grid-c4",
        lambda: SteerableCNN(group="C", n=4, channels=8, num_layers=3, kernel_size=5),
        (data.train.inputs.to(device),),
        data.train.targets.to(device),
        nn.functional.mse_loss,
        {"model": "SteerableCNN C4, 8 regular fields, 3 R2Conv 5x5", "batch": "16 fields x 32 x 32"},
    )


# ---------------------------------------------------------------------------------------------------------------
# training steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One variant (standard or relaxed) of one case, with its own model copy and optimiser."""

    def __init__(
        self,
        case: Case,
        model: nn.Module,
        relaxed: bool,
        total_steps: int,
        rows: int | None,
        source: str,
        device: torch.device,
        lr: float = 1e-3,
        fuse: bool = True,
    ) -> None:
        self.case, self.device, self.is_relaxed = case, device, relaxed
        self.step_index = 0
        if relaxed:
            self.net: nn.Module = relaxcli.relax(model, fuse=fuse)
            self.schedule = relaxcli.make_schedule("triangle", total_steps=total_steps, theta_max=1.0)
            self.reg = relaxcli.Regularizer(weight=0.01, rows=rows, source=source)  # type: ignore[arg-type]
        else:
            self.net = model
        self.net.to(device).train()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.phase: dict[str, list[float]] = {"forward": [], "regularizer": [], "backward": [], "optimizer": []}

    def step(self, phases: bool = False) -> float:
        """One optimiser step; returns its wall time in seconds (and records phase times when ``phases``)."""
        dev = self.device
        _sync(dev)
        t0 = time.perf_counter()
        if self.is_relaxed:
            self.schedule.before_step(self.net, self.step_index % self.schedule.total_steps)
        out = self.net(*self.case.inputs)
        loss = self.case.loss(out, self.case.target)
        if phases:
            _sync(dev)
            t1 = time.perf_counter()
        if self.is_relaxed:
            loss = loss + self.reg(self.net).total
        if phases:
            _sync(dev)
            t2 = time.perf_counter()
        loss.backward()
        if phases:
            _sync(dev)
            t3 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(dev)
        t4 = time.perf_counter()
        if phases:
            self.phase["forward"].append(t1 - t0)
            self.phase["regularizer"].append(t2 - t1)
            self.phase["backward"].append(t3 - t2)
            self.phase["optimizer"].append(t4 - t3)
        self.step_index += 1
        return t4 - t0


# ---------------------------------------------------------------------------------------------------------------
# statistics


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_bootstrap_ratio(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of median(b)/median(a), resampling the interleaved (a_i, b_i) pairs together."""
    g = torch.Generator().manual_seed(seed)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    idx = torch.randint(len(a), (n_boot, len(a)), generator=g)
    ratios = tb[idx].median(dim=1).values / ta[idx].median(dim=1).values
    lo, hi = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


def min_of_medians(xs: list[float], repeats: int) -> float:
    chunk = max(1, len(xs) // repeats)
    return min(_median(xs[i : i + chunk]) for i in range(0, len(xs) - chunk + 1, chunk))


# ---------------------------------------------------------------------------------------------------------------
# the benchmark


def run_case(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    base = case.build()
    model_a, model_b = base, copy.deepcopy(base)  # identical initial weights
    warmup = args.warmup if args.warmup is not None else max(3, args.steps // 10)
    total = warmup + args.steps
    a = Runner(case, model_a, False, total, args.rows, args.source, device)
    b = Runner(case, model_b, True, total, args.rows, args.source, device, fuse=not args.no_fuse)
    relaxed = b.net
    assert isinstance(relaxed, relaxcli.RelaxedModel)
    n_user = sum(p.numel() for p in model_a.parameters())
    n_branch = sum(p.numel() for p in relaxed.branch_parameters())

    for i in range(warmup):  # warm-up, interleaved as well
        for r in (a, b) if i % 2 == 0 else (b, a):
            r.step()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(args.steps):  # ABBA: each variant goes first half of the time
        order = (a, b) if i % 2 == 0 else (b, a)
        for r in order:
            (ta if r is a else tb).append(r.step(phases=args.breakdown))

    med_a, med_b = _median(ta), _median(tb)
    lo, hi = paired_bootstrap_ratio(ta, tb, seed=args.seed)
    mom_a, mom_b = min_of_medians(ta, args.repeats), min_of_medians(tb, args.repeats)
    result: dict[str, Any] = {
        "model": case.name,
        "info": case.info,
        "sites": len(relaxed.sites),
        "mode": relaxed.mode,
        "fused_sites": sum(s.fused for s in relaxed.sites),
        "user_params": n_user,
        "branch_params": n_branch,
        "steps": args.steps,
        "warmup": warmup,
        "standard_ms": 1e3 * med_a,
        "relaxed_ms": 1e3 * med_b,
        "ratio": med_b / med_a,
        "ratio_ci95": [lo, hi],
        "standard_ms_min_of_medians": 1e3 * mom_a,
        "relaxed_ms_min_of_medians": 1e3 * mom_b,
        "ratio_min_of_medians": mom_b / mom_a,
        "repeats": args.repeats,
    }
    if args.breakdown:
        result["breakdown_ms"] = {
            "standard": {k: 1e3 * _median(v) for k, v in a.phase.items()},
            "relaxed": {k: 1e3 * _median(v) for k, v in b.phase.items()},
        }
    return result


def pin_malloc() -> str:
    """Pin glibc's allocator to a steady state: big tensors come from the heap and are reused, not mmap'ed afresh
    (and page-faulted) on every step. glibc's dynamic mmap threshold otherwise makes CPU step times of models with
    10+ MB activations swing by 1.5-3x between runs. Returns a description for the header."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(m_trim_threshold, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return "default (mallopt unavailable)"
    if not ok:
        return "default (mallopt failed)"
    return "pinned (glibc mallopt: M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=2 GiB)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        choices=["nbody", "vn", "grid", "all"],
        default="all",
        help="all: nbody and vn; grid (escnn C4 steerable CNN) needs the escnn extra",
    )
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32], help="N-body hidden widths (default 16 32)")
    p.add_argument("--steps", type=int, default=100, help="measured steps per variant (default 100)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default max(3, steps/10))")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the whole run (default 1)")
    p.add_argument(
        "--rows",
        default="default",
        help="rows= of the Regularizer (an int, or 'none' for all rows; default: the Regularizer's)",
    )
    p.add_argument("--source", choices=["data", "weight"], default="data", help="Regularizer source (default data)")
    p.add_argument("--repeats", type=int, default=5, help="chunks for the min-of-medians estimate (default 5)")
    p.add_argument("--breakdown", action="store_true", help="also time forward / regulariser / backward / optimiser")
    p.add_argument(
        "--no-fuse",
        action="store_true",
        help="run each op and its branch separately (relax(fuse=False)) instead of as one product",
    )
    p.add_argument(
        "--malloc",
        choices=["pinned", "default"],
        default="pinned",
        help="pinned (default): fix glibc's mmap/trim thresholds for steady, comparable step times; "
        "default: leave the allocator alone",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.rows == "default":
        args.rows = inspect.signature(relaxcli.Regularizer).parameters["rows"].default
    elif args.rows.lower() in ("none", "all"):
        args.rows = None
    else:
        try:
            args.rows = int(args.rows)
        except ValueError:
            p.error(f"--rows must be an integer, 'none' or 'default', got {args.rows!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    malloc = pin_malloc() if args.malloc == "pinned" else "default"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases: list[Case] = []
    if args.model in ("nbody", "all"):
        cases += [nbody_case(w, device, args.seed) for w in args.widths]
    if args.model in ("vn", "all"):
        cases.append(vn_case(device, args.seed))
    if args.model == "grid":
        cases.append(grid_case(device, args.seed))

    header = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["overhead.py", *argv]),
        "torch": torch.__version__,
        "relaxcli": relaxcli.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "rows": args.rows,
        "source": args.source,
        "python": platform.python_version(),
        "malloc": malloc,
    }
    for k in ("command", "torch", "threads", "cpu", "device", "malloc", "date"):
        print(f"# {k}: {header[k]}")
    rows_note = " (unused by source=weight)" if args.source == "weight" else ""
    print(
        f"# regularizer: weight=0.01 rows={args.rows}{rows_note} source={args.source}; schedule: triangle; "
        f"optimiser: Adam; op and branch {'separate' if args.no_fuse else 'fused where the adapter can'}"
    )
    print(
        f"# {args.steps} interleaved (ABBA) steps per variant after warm-up; ratio = median relaxed / median standard"
    )
    results = []
    cols = (
        f"{'model':<12} {'sites':>5} {'standard ms':>12} {'relaxed ms':>11} {'ratio':>6} {'95% CI':>15} "
        f"{'min-of-med ratio':>16}"
    )
    print(cols)
    print("-" * len(cols))
    for case in cases:
        r = run_case(case, args, device)
        results.append(r)
        ci = f"[{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]"
        print(
            f"{r['model']:<12} {r['sites']:>5} {r['standard_ms']:>12.2f} {r['relaxed_ms']:>11.2f} "
            f"{r['ratio']:>6.3f} {ci:>15} {r['ratio_min_of_medians']:>16.3f}",
            flush=True,
        )
    if args.breakdown:
        print("\nphase breakdown (median ms per step)")
        print(f"{'model':<12} {'variant':<9} {'forward':>8} {'regular.':>8} {'backward':>8} {'optim.':>8}")
        for r in results:
            for variant in ("standard", "relaxed"):
                ph = r["breakdown_ms"][variant]
                print(
                    f"{r['model']:<12} {variant:<9} {ph['forward']:>8.2f} {ph['regularizer']:>8.2f} "
                    f"{ph['backward']:>8.2f} {ph['optimizer']:>8.2f}"
                )
    out = {"header": header, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
