"""Per-step training-time overhead of relaxation, measured side by side in one process.

For each model two copies with identical initial weights are trained on the same fixed batch:

- **standard**: forward, task loss, backward, Adam step over the user's parameters;
- **relaxed**: ``relaxcli.relax(model)`` with θ from a ``triangle`` schedule (``--schedule ace|ace_elastic``: learnt
  γ, its penalty and the dual update after each step, as ``relax train`` does), loss = task loss +
  ``Regularizer(weight=0.01)(relaxed).total``, backward, Adam step over the user's and the branches' parameters.

The two are timed **interleaved** in an ABBA pattern (A B B A A B ...), one optimiser step at a time, after a warm-up,
so slow drifts of the machine (frequency, other processes) hit both alike. Reported: the median ms/step of each, the
ratio of the medians, a paired bootstrap 95% interval for that ratio, and the min-of-medians over ``--repeats``
contiguous chunks of the run (robust against a noisy stretch). ``--breakdown`` also times the phases of a step
(forward, regulariser, backward, optimiser) for both variants. By default glibc's allocator is pinned (``mallopt``)
so that large activations are reused rather than mmap'ed and page-faulted afresh each step; without it the VN
step time of *either* variant swings by 1.5-3x between runs (``--malloc default`` to see that).

Models (``--model``, groups; ``all``: every group whose packages import), in the order of issue #19's table:

- ``nbody``: ``relaxcli.tasks.SEGNN`` (4 layers, 19 sites) on a batch of 100 five-particle systems, widths 16 and 32
  (``16x0e+16x1o``, ``32x0e+32x1o``); MSE loss. ``nbody-node``: the same with ``include=["@node_update"]`` (the
  two node-update tensor products per layer, 8 sites: what the official relaxed-SEGNN code relaxes).
- ``e3nn``: e3nn's own ``v2106.gate_points_networks.SimpleNetwork`` (its defaults: mul 50, lmax 2, 3 layers) and
  ``gate_points_2101.Network`` (hidden ``32x0e+32x0o+16x1e+16x1o+8x2e+8x2o``, 3 layers) on 8 point clouds of 24
  points (about 8 neighbours each); MSE loss on the pooled output. Relaxed through forward hooks (their radius graph
  cannot be traced).
- ``escnn``: escnn's tutorial steerable CNN over C4 and D4 (``benchmarks/models.py``, widths x``--escnn-width``) on 16
  29x29 images; cross-entropy. Fused ``R2Conv`` sites. Needs the escnn extra.
- ``vn-authors``: the Vector Neurons authors' VN-PointNet classifier (``benchmarks/models.py``: plain
  ``nn.Linear(c_in, c_out, bias=False)`` maps on transposed features, their widths, k = 20, feature transform; 2.1M
  parameters, 24 sites) on ``--vn-batch`` clouds of ``--vn-points`` points, relaxed with
  ``VectorNeuronAdapter("torch.nn.Linear")``; cross-entropy on random labels.
- ``vn``: the package's ``relaxcli.tasks.VNPointNet`` (64 channels, 3 layers, no k-NN) on ``[32, 512, 3]`` points;
  cross-entropy on random labels.
- ``grid``: ``relaxcli.tasks.SteerableCNN`` (escnn, C4, 8 regular fields, three 5x5 ``R2Conv``; relaxed through
  forward hooks) on 16 Allen-Cahn fields of 32x32; MSE loss. Needs the escnn extra.

``--memory`` runs each variant of each case alone in a fresh process for 3 steps and reports its peak memory (the
process's high-water RSS on CPU, ``max_memory_allocated`` on CUDA) and the rise over the state before the first step.
``--every k`` times the amortised regulariser; ``--no-regularizer`` the branches alone. The header records the load
average at the start: other processes slow both variants alike (they are interleaved) but widen the intervals.

Example:
    python benchmarks/overhead.py --model all --steps 200 --threads 1 --breakdown --memory --json overhead.json
    python benchmarks/overhead.py --model nbody nbody-node --every 4
    python benchmarks/overhead.py --model vn --rows 256 --source weight --breakdown
    python benchmarks/overhead.py --model vn --no-fuse     # op and branch as two products, for comparison
    python benchmarks/overhead.py --model nbody --on-edges  # message branches on the edge rows, for comparison
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import inspect
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import relaxcli
from relaxcli.run.relaxation import Relaxation
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
    include: tuple[str, ...] = ("*",)  # relax(include=...): globs or presets such as "@node_update"
    adapters: Callable[[], list[Any]] | None = None  # relax(adapters=...): e.g. the VN authors' nn.Linear maps
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of every call (MACE: compute_force)


def nbody_case(width: int, device: torch.device, seed: int, include: tuple[str, ...] = ("*",)) -> Case:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(100, 5, 3, generator=g)
    vel = torch.randn(100, 5, 3, generator=g)
    charges = torch.randint(0, 2, (100, 5, 1), generator=g).float() * 2 - 1
    target = pos + 0.1 * torch.randn(100, 5, 3, generator=g)
    hidden = f"{width}x0e+{width}x1o"
    node = include == ("@node_update",)
    return Case(
        f"nbody-{width}{'-node' if node else ''}",
        lambda: SEGNN(hidden_irreps=hidden, num_layers=4),
        tuple(t.to(device) for t in (pos, vel, charges)),
        target.to(device),
        nn.functional.mse_loss,
        {"hidden_irreps": hidden, "num_layers": 4, "batch": "100 systems x 5 particles", "include": list(include)},
        include,
    )


def _point_graphs(graphs: int, nodes: int, box: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(graphs * nodes, 3, generator=g) * box
    return pos, torch.arange(graphs).repeat_interleave(nodes)


def e3nn_simple_case(device: torch.device, seed: int) -> Case:
    """e3nn's own ``v2106.gate_points_networks.SimpleNetwork`` with its defaults (mul 50, lmax 2, 3 layers)."""
    from e3nn.nn.models.v2106.gate_points_networks import SimpleNetwork

    pos, batch = _point_graphs(8, 24, 4.6, seed)  # about 8 neighbours within r = 2
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(pos.shape[0], 9, generator=g)
    data = {"pos": pos.to(device), "x": x.to(device), "batch": batch.to(device)}
    target = torch.randn(8, 4, generator=g)
    return Case(
        "e3nn-simple",
        lambda: SimpleNetwork("3x0e+2x1o", "1x0e+1x1o", max_radius=2.0, num_neighbors=8.0, num_nodes=24.0),
        (data,),
        target.to(device),
        nn.functional.mse_loss,
        {"model": "e3nn SimpleNetwork('3x0e+2x1o' -> '1x0e+1x1o', mul=50, lmax=2, layers=3)", "batch": "8 x 24"},
    )


def e3nn_2101_case(device: torch.device, seed: int) -> Case:
    """e3nn's own ``gate_points_2101.Network`` (3 layers, hidden 32x0e+32x0o+16x1e+16x1o+8x2e+8x2o)."""
    from e3nn.nn.models.gate_points_2101 import Network

    pos, batch = _point_graphs(8, 24, 4.6, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(pos.shape[0], 5, generator=g)
    data = {"pos": pos.to(device), "x": x.to(device), "batch": batch.to(device)}
    target = torch.randn(8, 4, generator=g)
    hidden = "32x0e+32x0o+16x1e+16x1o+8x2e+8x2o"
    return Case(
        "e3nn-2101",
        lambda: Network(
            irreps_in="5x0e",
            irreps_hidden=hidden,
            irreps_out="1x0e+1x1o",
            irreps_node_attr="0e",
            irreps_edge_attr="0e+1o+2e",
            layers=3,
            max_radius=2.0,
            number_of_basis=10,
            radial_layers=1,
            radial_neurons=64,
            num_neighbors=8.0,
            num_nodes=24.0,
        ),
        (data,),
        target.to(device),
        nn.functional.mse_loss,
        {"model": f"e3nn gate_points_2101.Network(5x0e -> {hidden} -> 1x0e+1x1o, 3 layers)", "batch": "8 x 24"},
    )


def vn_authors_case(device: torch.device, seed: int, batch: int = 8, points: int = 512) -> Case:
    """The VN authors' VN-PointNet (``benchmarks/models.py``): plain ``nn.Linear`` maps at their widths."""
    from models import AuthorsVNPointNet

    from relaxcli.ops import VectorNeuronAdapter, registered_ops

    g = torch.Generator().manual_seed(seed)
    points_ = torch.randn(batch, 3, points, generator=g)
    labels = torch.randint(0, 40, (batch,), generator=g)
    return Case(
        "vn-authors",
        lambda: AuthorsVNPointNet(num_classes=40, k=20),
        (points_.to(device),),
        labels.to(device),
        nn.functional.cross_entropy,
        {
            "model": "VN authors' VN-PointNet cls (nn.Linear maps, k=20, feature transform)",
            "batch": f"{batch} x {points}",
        },
        adapters=lambda: [VectorNeuronAdapter("torch.nn.Linear"), *registered_ops()],
    )


def escnn_case(group: str, device: torch.device, seed: int, width: float = 0.5) -> Case:
    """escnn's tutorial steerable CNN (``benchmarks/models.py``) over C4 or D4, fused ``R2Conv`` sites."""
    from models import escnn_tutorial_cnn

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(16, 1, 29, 29, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    return Case(
        f"escnn-{group.lower()}",
        lambda: escnn_tutorial_cnn(group, width=width),
        (images.to(device),),
        labels.to(device),
        nn.functional.cross_entropy,
        {"model": f"escnn tutorial CNN, {group}, fields x{width} of 24/48/48/96/96/64", "batch": "16 x 29 x 29"},
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


def atoms_case(kind: str, device: torch.device, seed: int) -> Case:
    """An interatomic potential on a graph batch of 10 EMT Cu13 clusters (the ``atoms`` recipes' data), energy +
    forces loss, forces by autograd inside ``forward``: the built-in NequIP-style ``Potential``, MACE
    (``ScaleShiftMACE``) or NequIP as the recipes build them (``mace``/``nequip`` need their extras)."""
    from relaxcli.atoms import EnergyForcesLoss, GraphCollate
    from relaxcli.tasks.atoms import AtomsData, Potential

    data = AtomsData(train=10, val=1, test=1, seed=seed)
    inputs, target = GraphCollate()([data.train[i] for i in range(10)])
    to = {k: v.to(device) for k, v in inputs.items()}
    kwargs: dict[str, Any] = {}
    if kind == "mace":
        from relaxcli.tasks.atoms_extras import mace_model

        build: Callable[[], nn.Module] = lambda: mace_model(elements=["Cu"])
        kwargs = {"training": True, "compute_force": True}
    elif kind == "nequip":
        from relaxcli.tasks.atoms_extras import nequip_model

        build = lambda: nequip_model(elements=["Cu"])
    else:
        build = Potential
    return Case(
        f"atoms-{kind}",
        build,
        (to,),
        {k: v.to(device) for k, v in target.items()},
        EnergyForcesLoss(forces_weight=10.0),
        {"model": {"atoms": "relaxcli.tasks.Potential"}.get(kind, kind), "batch": "10 Cu13 clusters (graph)"},
        kwargs=kwargs,
    )


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
        on_nodes: bool = True,
        every: int = 1,
        regularize: bool = True,
        schedule: str = "triangle",
        adam: str = "loop",
    ) -> None:
        self.case, self.device, self.is_relaxed, self.regularize = case, device, relaxed, regularize
        self.step_index = 0
        if relaxed:
            adapters = case.adapters() if case.adapters is not None else None
            self.net: nn.Module = relaxcli.relax(
                model, fuse=fuse, on_nodes=on_nodes, include=case.include, adapters=adapters
            )
            options = {"theta_max": 1.0} if schedule == "triangle" else {}
            self.schedule = relaxcli.make_schedule(schedule, total_steps=total_steps, **options)
            self.reg = relaxcli.Regularizer(weight=0.01, rows=rows, source=source, every=every)  # type: ignore[arg-type]
        else:
            self.net = model
        self.net.to(device).train()
        # the parameter groups relax train uses: ACE's γ (and u) attached and trained in a group of their own
        params = Relaxation(self.net, self.reg, self.schedule).param_groups() if relaxed else self.net.parameters()
        # "loop": torch's default on CPU; "foreach" / "fused": its multi-tensor and fused kernels, the same algorithm
        impl = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(adam, {})
        self.opt = torch.optim.Adam(params, lr=lr, **impl)
        self.phase: dict[str, list[float]] = {"forward": [], "regularizer": [], "backward": [], "optimizer": []}

    def step(self, phases: bool = False) -> float:
        """One optimiser step; returns its wall time in seconds (and records phase times when ``phases``)."""
        dev = self.device
        _sync(dev)
        t0 = time.perf_counter()
        if self.is_relaxed:
            self.schedule.before_step(self.net, self.step_index % self.schedule.total_steps)
        out = self.net(*self.case.inputs, **self.case.kwargs)
        loss = self.case.loss(out, self.case.target)
        if phases:
            _sync(dev)
            t1 = time.perf_counter()
        if self.is_relaxed and self.regularize:
            loss = loss + self.reg(self.net).total
        if self.is_relaxed and (penalty := self.schedule.penalty(self.net)) is not None:
            loss = loss + penalty
        if phases:
            _sync(dev)
            t2 = time.perf_counter()
        loss.backward()
        if phases:
            _sync(dev)
            t3 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.is_relaxed:
            self.schedule.after_step(self.net, self.step_index % self.schedule.total_steps)
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


def paired_bootstrap_ratio(
    a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0, stat: str = "median"
) -> tuple[float, float]:
    """95% interval of median(b)/median(a) (or of the means), resampling the interleaved (a_i, b_i) pairs together."""
    g = torch.Generator().manual_seed(seed)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    idx = torch.randint(len(a), (n_boot, len(a)), generator=g)
    if stat == "mean":
        ratios = tb[idx].mean(dim=1) / ta[idx].mean(dim=1)
    else:
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
    a = Runner(case, model_a, False, total, args.rows, args.source, device, adam=args.adam)
    b = Runner(
        case,
        model_b,
        True,
        total,
        args.rows,
        args.source,
        device,
        fuse=not args.no_fuse,
        on_nodes=not args.on_edges,
        every=args.every,
        regularize=not args.no_regularizer,
        schedule=args.schedule,
        adam=args.adam,
    )
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
        "sites_on_nodes": sum(s.on_nodes for s in relaxed.sites),
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
        # with every > 1 the median step skips the regulariser: the mean is the amortised cost
        "standard_ms_mean": 1e3 * statistics.fmean(ta),
        "relaxed_ms_mean": 1e3 * statistics.fmean(tb),
        "ratio_mean": statistics.fmean(tb) / statistics.fmean(ta),
        "ratio_mean_ci95": list(paired_bootstrap_ratio(ta, tb, seed=args.seed, stat="mean")),
        "repeats": args.repeats,
    }
    if args.breakdown:
        result["breakdown_ms"] = {
            "standard": {k: 1e3 * _median(v) for k, v in a.phase.items()},
            "relaxed": {k: 1e3 * _median(v) for k, v in b.phase.items()},
        }
    if args.memory:
        result["peak_memory_mb"] = {v: probe_memory(case.name, v, args) for v in VARIANTS}
    return result


def probe_memory(name: str, variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak memory of ``variant`` training ``name`` alone in a fresh process (the high-water RSS on CPU,
    ``max_memory_allocated`` on CUDA): the process's peak, and its rise over the state before the first step
    (model, branches and optimiser built: activations, gradients and optimiser state)."""
    cmd = [sys.executable, __file__, "--probe", name, variant, *_probe_args(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe_args(args: argparse.Namespace) -> list[str]:
    flags = [
        "--model",
        *args.model,
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        "--every",
        str(args.every),
        "--schedule",
        args.schedule,
        "--source",
        args.source,
    ]
    flags += ["--rows", "none" if args.rows is None else str(args.rows), "--widths", *map(str, args.widths)]
    flags += [
        "--vn-batch",
        str(args.vn_batch),
        "--vn-points",
        str(args.vn_points),
        "--escnn-width",
        str(args.escnn_width),
    ]
    flags += [f"--{args.adam}"] if args.adam != "loop" else []
    flags += ["--on-edges"] if args.on_edges else []
    return flags + (["--no-fuse"] if args.no_fuse else []) + (["--no-regularizer"] if args.no_regularizer else [])


def _rss_mb() -> float:
    """This process's high-water RSS in MiB: ``VmHWM`` (``ru_maxrss`` would start at the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_probe(name: str, variant: str, args: argparse.Namespace, device: torch.device) -> None:
    pin_malloc()
    case = next(c for c in make_cases(args, device) if c.name == name)
    torch.manual_seed(args.seed)
    r = Runner(
        case, case.build(), variant == "relaxed", 100, args.rows, args.source, device,
        fuse=not args.no_fuse, on_nodes=not args.on_edges, every=args.every, regularize=not args.no_regularizer,
        schedule=args.schedule, adam=args.adam,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        base = _rss_mb()  # the high-water mark so far: building the model
    for _ in range(3):
        r.step()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    print(json.dumps({"peak": peak, "training": peak - base}))


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


VARIANTS = ("standard", "relaxed")
GROUPS = ["all", "nbody", "nbody-node", "e3nn", "vn-authors", "vn", "grid", "escnn", "atoms", "mace", "nequip"]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def make_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """The cases of the groups ``args.model`` names, in the order of the issue's table."""
    want = set(args.model)
    if "all" in want:
        want = set(GROUPS[1:]) - (set() if _has("escnn") else {"grid", "escnn"})
        want -= {name for name in ("mace", "nequip") if not _has(name)} | (set() if _has("ase") else {"atoms"})
    cases: list[Case] = []
    if "nbody" in want:
        cases += [nbody_case(w, device, args.seed) for w in args.widths]
    if "nbody-node" in want:
        cases += [nbody_case(w, device, args.seed, ("@node_update",)) for w in args.widths]
    if "e3nn" in want:
        cases += [e3nn_simple_case(device, args.seed), e3nn_2101_case(device, args.seed)]
    if "escnn" in want:
        cases += [escnn_case(g, device, args.seed, args.escnn_width) for g in ("C4", "D4")]
    if "vn-authors" in want:
        cases.append(vn_authors_case(device, args.seed, args.vn_batch, args.vn_points))
    if "vn" in want:
        cases.append(vn_case(device, args.seed))
    if "grid" in want:
        cases.append(grid_case(device, args.seed))
    cases += [atoms_case(kind, device, args.seed) for kind in ("atoms", "mace", "nequip") if kind in want]
    return cases


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        nargs="+",
        choices=GROUPS,
        default=["all"],
        help="model groups (default all: every group whose packages import; escnn ones need the escnn extra)",
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
        "--on-edges",
        action="store_true",
        help="compute a branch on cat([h[dst], h[src], e]) on the edge rows (relax(on_nodes=False)), not the nodes",
    )
    p.add_argument(
        "--malloc",
        choices=["pinned", "default"],
        default="pinned",
        help="pinned (default): fix glibc's mmap/trim thresholds for steady, comparable step times; "
        "default: leave the allocator alone",
    )
    p.add_argument("--every", type=int, default=1, help="Regularizer every= (amortised regulariser; default 1)")
    adam = p.add_mutually_exclusive_group()
    adam.add_argument(
        "--foreach", dest="adam", action="store_const", const="foreach", help="Adam(foreach=True) for both variants"
    )
    adam.add_argument(
        "--fused", dest="adam", action="store_const", const="fused", help="Adam(fused=True) for both variants"
    )
    p.set_defaults(adam="loop")  # torch's default on CPU: a loop over the parameters
    p.add_argument(
        "--schedule",
        default="triangle",
        choices=["triangle", "ace", "ace_elastic"],
        help="θ schedule of the relaxed variant (default triangle; ace, ace_elastic also train γ and the duals)",
    )
    p.add_argument("--no-regularizer", action="store_true", help="relaxed step without the regulariser (branches only)")
    p.add_argument("--memory", action="store_true", help="also measure peak memory, each variant in a fresh process")
    p.add_argument("--memory-only", action="store_true", help="measure peak memory only (no timing)")
    p.add_argument("--probe", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--vn-batch", type=int, default=8, help="clouds per batch for vn-authors (default 8)")
    p.add_argument("--vn-points", type=int, default=512, help="points per cloud for vn-authors (default 512)")
    p.add_argument("--escnn-width", type=float, default=0.5, help="escnn tutorial CNN width factor (default 0.5)")
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
    if args.probe:
        run_probe(args.probe[0], args.probe[1], args, device)
        return {}
    cases = make_cases(args, device)

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
        "load_average_at_start": os.getloadavg(),
        "every": args.every,
        "schedule": args.schedule,
        "regularizer": not args.no_regularizer,
    }
    for k in ("command", "torch", "threads", "cpu", "device", "malloc", "date", "load_average_at_start"):
        print(f"# {k}: {header[k]}")
    rows_note = " (unused by source=weight)" if args.source == "weight" else ""
    print(
        f"# regularizer: weight=0.01 rows={args.rows}{rows_note} source={args.source}; schedule: {args.schedule}; "
        f"optimiser: Adam{f' ({args.adam})' if args.adam != 'loop' else ''}; "
        f"op and branch {'separate' if args.no_fuse else 'fused where the adapter can'}; "
        f"message branches on {'the edges' if args.on_edges else 'the nodes where the graph shows a gather'}"
        f"{'; every=' + str(args.every) if args.every > 1 else ''}{'; NO regulariser' if args.no_regularizer else ''}"
    )
    print(
        f"# {args.steps} interleaved (ABBA) steps per variant after warm-up; ratio = median relaxed / median standard"
    )
    results = []
    cols = (
        f"{'model':<14} {'sites':>5} {'standard ms':>12} {'relaxed ms':>11} {'ratio':>6} {'95% CI':>15} "
        f"{'min-of-med ratio':>16}"
    )
    print(cols)
    print("-" * len(cols))
    if args.memory_only:
        args.memory = True
        results = [
            {"model": c.name, "peak_memory_mb": {v: probe_memory(c.name, v, args) for v in VARIANTS}} for c in cases
        ]
    for case in [] if args.memory_only else cases:
        r = run_case(case, args, device)
        results.append(r)
        ci = f"[{r['ratio_ci95'][0]:.3f}, {r['ratio_ci95'][1]:.3f}]"
        print(
            f"{r['model']:<14} {r['sites']:>5} {r['standard_ms']:>12.2f} {r['relaxed_ms']:>11.2f} "
            f"{r['ratio']:>6.3f} {ci:>15} {r['ratio_min_of_medians']:>16.3f}",
            flush=True,
        )
        if args.every > 1:  # the median step skips the regulariser; the mean is the amortised cost
            lo, hi = r["ratio_mean_ci95"]
            print(f"{'':<14} {'mean':>5} {r['standard_ms_mean']:>12.2f} {r['relaxed_ms_mean']:>11.2f} "
                  f"{r['ratio_mean']:>6.3f} {f'[{lo:.3f}, {hi:.3f}]':>15}", flush=True)  # fmt: skip
    if args.breakdown and not args.memory_only:
        print("\nphase breakdown (median ms per step)")
        print(f"{'model':<14} {'variant':<9} {'forward':>8} {'regular.':>8} {'backward':>8} {'optim.':>8}")
        for r in results:
            for variant in ("standard", "relaxed"):
                ph = r["breakdown_ms"][variant]
                print(
                    f"{r['model']:<14} {variant:<9} {ph['forward']:>8.2f} {ph['regularizer']:>8.2f} "
                    f"{ph['backward']:>8.2f} {ph['optimizer']:>8.2f}"
                )
    if args.memory:
        print("\npeak memory (MB; each variant alone in a fresh process): process peak, and its rise in training")
        print(f"{'model':<14} {'standard':>9} {'relaxed':>9} {'train std':>10} {'train rel':>10} {'ratio':>6}")
        for r in results:
            m = r["peak_memory_mb"]
            # the rise in training over building the model; where both peaks were reached while building it is ~0
            rise = m["standard"]["training"]
            ratio = f"{m['relaxed']['training'] / rise:>6.2f}" if rise >= 1.0 else f"{'-':>6}"
            print(
                f"{r['model']:<14} {m['standard']['peak']:>9.0f} {m['relaxed']['peak']:>9.0f} "
                f"{m['standard']['training']:>10.0f} {m['relaxed']['training']:>10.0f} {ratio}"
            )
    out = {"header": header, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
