"""The charged N-body benchmark (Kipf et al. 2018, 3D variant of EGNN / SEGNN), generated fast and cached.

The simulator reproduces the published ``ChargedParticlesSim`` rollout used for ``nbody_small``: 5 unit-mass
particles in 3D with charges ±1, Coulomb-like pair forces ``q_i q_j (x_i - x_j) / |x_i - x_j|^3`` whose summed
components are clipped to ±100, positions ~ N(0, 1), velocities of norm 0.5 in a random direction, and a
symplectic Euler integrator with ``dt = 0.001``. Frame ``k`` is integrator step ``100 (k + 1)``; the task maps
frame 30 (positions, velocities, charges) to the positions at frame 40, i.e. 1.0 time unit ahead.
An optional uniform field ``E`` along z (``F_i += q_i E``) breaks the symmetry down to rotations about z.

Unlike the published loop-per-trajectory generator, everything is vectorised over trajectories and the 10
particle pairs, and only the steps up to the output frame are integrated, so the papers' 3000 / 2000 / 2000
splits take a few seconds. Each split is drawn from its own random stream and cached as its own ``.npz``.

Example::

    >>> from torch.utils.data import DataLoader
    >>> from relaxcli.tasks.nbody import NBodyData
    >>> data = NBodyData(train=3000, val=2000, test=2000, seed=0)
    >>> (pos, vel, q), target = next(iter(DataLoader(data.train, batch_size=100)))
    >>> pos.shape, vel.shape, q.shape, target.shape
    (torch.Size([100, 5, 3]), torch.Size([100, 5, 3]), torch.Size([100, 5, 1]), torch.Size([100, 5, 3]))
    >>> data.baselines("test")            # sanity anchors: about 0.27 and 0.11
    {'no_motion': 0.27..., 'constant_velocity': 0.11...}

The reference model, :class:`SEGNN`, is an ordinary user model: ``relax`` finds its equivariant ops through
the graph pass like any other model's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn
from torch.utils.data import Dataset

from .cache import SPLITS, cache_folder, cached, split_sizes

__all__ = [
    "SIMULATOR_VERSION",
    "SPLITS",
    "simulate_charged_nbody",
    "baseline_mse",
    "NBodySplit",
    "NBodyData",
    "SEGNN",
    "fully_connected_edges",
]

#: Bump whenever the simulated numbers could change; it is part of every cache key.
SIMULATOR_VERSION = "charged-nbody-v1"

DT = 0.001  # integrator time step
SAMPLE_FREQ = 100  # integrator steps between saved frames
MAX_FORCE = 100.0  # each component of the summed pair force is clipped to ±MAX_FORCE
LOC_STD = 1.0  # initial positions ~ N(0, LOC_STD^2) per coordinate
VEL_NORM = 0.5  # norm of every initial velocity
INTERACTION_STRENGTH = 1.0

ARRAY_KEYS: tuple[str, ...] = ("pos", "vel", "charges", "target_pos", "target_vel", "clipped")


# ----------------------------------------------------------------------------------------------------------
# Simulator
# ----------------------------------------------------------------------------------------------------------


def _pair_forces(
    x: np.ndarray,
    q: np.ndarray,
    qq: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray],
    field: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Forces on every particle of every trajectory, in the internal layout ``[N, 3, T]``.

    Returns the clipped force (plus the external field) and a ``[T]`` mask of trajectories where clipping
    was active at this step.
    """
    i_idx, j_idx = pairs
    d = x[i_idx] - x[j_idx]  # [P, 3, T], x_i - x_j
    r2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]  # [P, T]
    f = d * (INTERACTION_STRENGTH * qq / (r2 * np.sqrt(r2)))[:, None]  # force of j on i, [P, 3, T]
    force = np.zeros_like(x)
    for p in range(len(i_idx)):  # 10 pairs for 5 particles: Newton's third law, each pair once
        force[i_idx[p]] += f[p]
        force[j_idx[p]] -= f[p]
    clipped = (np.abs(force) > MAX_FORCE).any(axis=(0, 1))
    np.clip(force, -MAX_FORCE, MAX_FORCE, out=force)
    if field != 0.0:
        force[:, 2] += q * field  # uniform field along z, added after the pair-force clip
    return force, clipped


def simulate_charged_nbody(
    num_trajectories: int,
    seed: int | np.random.SeedSequence,
    num_particles: int = 5,
    frames: tuple[int, int] = (30, 40),
    field: float = 0.0,
    dtype: npt.DTypeLike = np.float64,
) -> dict[str, np.ndarray]:
    """Simulate charged N-body trajectories and return the input and output frames.

    The rollout is the published one (Kipf et al. 2018, as used by EGNN / SEGNN): ``v += dt F(x0)``, then for
    integrator steps ``i = 1, 2, ...``: ``x += dt v``, save ``(x, v)`` when ``i % 100 == 0``, ``v += dt F(x)``.
    Frame ``k`` is step ``100 (k + 1)``; integration stops at the output frame (frame 40: 4100 steps). There
    is no box clamping. With ``field != 0`` every particle also feels ``q_i * field`` along z (added after the
    clip of the pair forces, so momentum changes by exactly ``field * sum(q) * t`` along z when no clip acts).

    Initial conditions come from one ``standard_normal((T, N, 7))`` draw (3 position, 3 velocity-direction
    and 1 charge-sign numbers per particle, trajectory-major), so the first ``k`` trajectories for a seed do
    not depend on ``num_trajectories``. Charges are ±1 with probability 1/2 each (the sign of a normal).

    Args:
        num_trajectories: number of independent systems ``T`` (0 is allowed).
        seed: anything :func:`numpy.random.default_rng` accepts (an int >= 0 or a ``SeedSequence``).
        num_particles: particles per system ``N`` (at least 2).
        frames: ``(input_frame, output_frame)`` with ``0 <= input < output``.
        field: strength of the uniform external field along z.
        dtype: floating dtype of the simulation and of the returned arrays (float64 recommended).

    Returns:
        ``pos``, ``vel`` ``[T, N, 3]`` at the input frame; ``charges`` ``[T, N, 1]``; ``target_pos``,
        ``target_vel`` ``[T, N, 3]`` at the output frame; ``clipped`` ``[T]`` (bool): whether the force clip
        was active at any integrator step up to the output frame.
    """
    frame_in, frame_out = (int(f) for f in frames)
    if not 0 <= frame_in < frame_out:
        raise ValueError(f"frames must satisfy 0 <= input < output, got {frames}")
    if num_particles < 2:
        raise ValueError(f"num_particles must be at least 2, got {num_particles}")
    if num_trajectories < 0:
        raise ValueError(f"num_trajectories must be >= 0, got {num_trajectories}")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")

    T, N = int(num_trajectories), int(num_particles)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((T, N, 7))  # always drawn in float64, then cast: same systems in every dtype
    direction = z[..., 3:6] / np.linalg.norm(z[..., 3:6], axis=-1, keepdims=True)
    charges = np.where(z[..., 6] >= 0.0, 1.0, -1.0)  # [T, N]

    # Internal layout [N, 3, T]: trajectories contiguous, so every operation is one long vector op.
    x = np.ascontiguousarray((LOC_STD * z[..., 0:3]).transpose(1, 2, 0), dtype=dtype)
    v = np.ascontiguousarray((VEL_NORM * direction).transpose(1, 2, 0), dtype=dtype)
    q = np.ascontiguousarray(charges.T, dtype=dtype)  # [N, T]
    pairs = np.triu_indices(N, k=1)
    qq = q[pairs[0]] * q[pairs[1]]  # [P, T]
    dt = np.array(DT, dtype=dtype)[()]
    field_value = float(field)

    step_in, step_out = SAMPLE_FREQ * (frame_in + 1), SAMPLE_FREQ * (frame_out + 1)
    force, clipped = _pair_forces(x, q, qq, pairs, field_value)
    v += dt * force
    saved: dict[str, np.ndarray] = {}
    for step in range(1, step_out + 1):
        x += dt * v
        if step == step_in:
            saved["pos"], saved["vel"] = x.transpose(2, 0, 1).copy(), v.transpose(2, 0, 1).copy()
        if step == step_out:  # the last frame needed: no further force evaluation
            saved["target_pos"], saved["target_vel"] = x.transpose(2, 0, 1).copy(), v.transpose(2, 0, 1).copy()
            break
        force, clipped_now = _pair_forces(x, q, qq, pairs, field_value)
        clipped |= clipped_now
        v += dt * force

    return {
        "pos": saved["pos"],
        "vel": saved["vel"],
        "charges": np.ascontiguousarray(q.T[..., None]),
        "target_pos": saved["target_pos"],
        "target_vel": saved["target_vel"],
        "clipped": clipped,
    }


def baseline_mse(arrays: dict[str, np.ndarray], frames: tuple[int, int] = (30, 40)) -> dict[str, float]:
    """Sanity anchors for simulated arrays: MSE of predicting no motion and constant velocity.

    The constant-velocity prediction is ``pos + vel * t`` with ``t = (output - input) * 100 * dt`` (1.0 for
    frames 30 -> 40). On ``nbody_small`` the reference values are about 0.27 and 0.11.
    """
    horizon = (frames[1] - frames[0]) * SAMPLE_FREQ * DT
    pos = np.asarray(arrays["pos"], dtype=np.float64)
    vel = np.asarray(arrays["vel"], dtype=np.float64)
    target = np.asarray(arrays["target_pos"], dtype=np.float64)
    if len(pos) == 0:
        return {"no_motion": float("nan"), "constant_velocity": float("nan")}
    return {
        "no_motion": float(np.mean((target - pos) ** 2)),
        "constant_velocity": float(np.mean((target - pos - horizon * vel) ** 2)),
    }


# ----------------------------------------------------------------------------------------------------------
# Datasets and cache
# ----------------------------------------------------------------------------------------------------------


class NBodySplit(Dataset):
    """One split as a map-style dataset of ``((pos [N,3], vel [N,3], charges [N,1]), target_pos [N,3])``.

    All tensors are float32. ``arrays`` keeps the simulator output (in the simulation dtype) for analysis.
    """

    def __init__(self, arrays: dict[str, np.ndarray], name: str = "") -> None:
        self.name = name
        self.arrays = arrays
        self.pos = torch.as_tensor(np.asarray(arrays["pos"], dtype=np.float32))
        self.vel = torch.as_tensor(np.asarray(arrays["vel"], dtype=np.float32))
        self.charges = torch.as_tensor(np.asarray(arrays["charges"], dtype=np.float32))
        self.target = torch.as_tensor(np.asarray(arrays["target_pos"], dtype=np.float32))

    def __len__(self) -> int:
        return self.pos.shape[0]

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        return (self.pos[index], self.vel[index], self.charges[index]), self.target[index]

    def __repr__(self) -> str:
        return f"NBodySplit({self.name!r}, {len(self)} systems)"


class NBodyData:
    """The ``nbody_small`` task: ``train``, ``val`` and ``test`` splits of charged N-body systems.

    Each split is simulated from its own stream, seeded by ``SeedSequence([seed, split_id])``, so the
    validation and test sets do not depend on the training size (and a smaller training set is a prefix of a
    larger one). Each split is cached separately as ``nbody-<split>-<hash>.npz`` under ``cache_dir``, where the
    hash covers every parameter that affects the numbers (including :data:`SIMULATOR_VERSION`).

    Args:
        train, val, test: number of systems per split.
        seed: base seed (an int >= 0).
        field: uniform external field along z (0 for the fully E(3)-symmetric task).
        cache_dir: cache folder; default :func:`~relaxcli.tasks.cache.default_cache_dir`.
        num_particles: particles per system.
        frames: ``(input_frame, output_frame)``; the papers use ``(30, 40)``.
        cache: set ``False`` to neither read nor write the cache.

    Attributes:
        train, val, test: :class:`NBodySplit` datasets.
        sources: for each split, ``"cache"`` or ``"simulated"``.
        cache_paths: for each split, the cache file (``None`` when caching is off).
    """

    def __init__(
        self,
        train: int = 3000,
        val: int = 2000,
        test: int = 2000,
        seed: int = 0,
        field: float = 0.0,
        cache_dir: str | os.PathLike[str] | None = None,
        num_particles: int = 5,
        frames: tuple[int, int] = (30, 40),
        cache: bool = True,
    ) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.field = float(field) + 0.0  # normalises -0.0 to 0.0 so both share a cache entry
        self.num_particles = int(num_particles)
        self.frames = (int(frames[0]), int(frames[1]))
        self.cache_dir = cache_folder(cache_dir, cache)
        self.sizes = split_sizes(train, val, test)
        self.sources: dict[str, str] = {}
        self.cache_paths: dict[str, Path | None] = {}
        self.splits: dict[str, NBodySplit] = {name: self._load(name) for name in SPLITS}
        self.train, self.val, self.test = self.splits["train"], self.splits["val"], self.splits["test"]

    # -- parameters and cache ----------------------------------------------------------------------------

    def split_params(self, split: str) -> dict[str, Any]:
        """Every parameter that determines the numbers of ``split`` (the cache key is a hash of this)."""
        return {
            "version": SIMULATOR_VERSION,
            "split": split,
            "split_id": SPLITS.index(split),
            "seed": self.seed,
            "num_trajectories": self.sizes[split],
            "num_particles": self.num_particles,
            "frames": list(self.frames),
            "field": self.field,
            "dtype": "float64",
            "dt": DT,
            "sample_freq": SAMPLE_FREQ,
            "max_force": MAX_FORCE,
            "loc_std": LOC_STD,
            "vel_norm": VEL_NORM,
            "interaction_strength": INTERACTION_STRENGTH,
        }

    def _load(self, split: str) -> NBodySplit:
        arrays, from_cache, self.cache_paths[split] = cached(
            self.cache_dir,
            "nbody",
            split,
            self.split_params(split),
            ARRAY_KEYS,
            lambda: simulate_charged_nbody(
                self.sizes[split],
                np.random.SeedSequence([self.seed, SPLITS.index(split)]),
                num_particles=self.num_particles,
                frames=self.frames,
                field=self.field,
                dtype=np.float64,
            ),
        )
        self.sources[split] = "cache" if from_cache else "simulated"
        return NBodySplit(arrays, split)

    # -- helpers -----------------------------------------------------------------------------------------

    def baselines(self, split: str = "test") -> dict[str, float]:
        """No-motion and constant-velocity MSE on ``split`` (about 0.27 and 0.11 for ``nbody_small``)."""
        return baseline_mse(self.splits[split].arrays, self.frames)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"NBodyData({sizes}, seed={self.seed}, field={self.field}, frames={self.frames})"


# ----------------------------------------------------------------------------------------------------------
# The reference model
# ----------------------------------------------------------------------------------------------------------


def fully_connected_edges(num_systems: int, num_nodes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and destination node indices of all directed edges i != j within each system (flattened nodes)."""
    # src-major, destinations in increasing order, without a boolean mask (so torch.export can keep the batch
    # dimension symbolic): for source i the k-th destination is k, or k + 1 once k reaches i
    src = torch.arange(num_nodes, device=device).repeat_interleave(num_nodes - 1)
    k = torch.arange(num_nodes - 1, device=device).repeat(num_nodes)
    dst = k + (k >= src).to(k.dtype)
    offset = (torch.arange(num_systems, device=device) * num_nodes)[:, None]
    return (src[None] + offset).reshape(-1), (dst[None] + offset).reshape(-1)


class _GatedTP(nn.Module):
    """``Gate(FullyConnectedTensorProduct(x, attr))``: an equivariant nonlinear layer with irreps_out features."""

    def __init__(self, irreps_in: o3.Irreps, irreps_attr: o3.Irreps, irreps_out: o3.Irreps) -> None:
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = enn.Gate(
            scalars, [torch.nn.functional.silu] * len(scalars), gates, [torch.sigmoid] * len(gates), gated
        )
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_attr, self.gate.irreps_in)

    def forward(self, x: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        return self.gate(self.tp(x, attr))


class _SEGNNLayer(nn.Module):
    def __init__(self, hidden: o3.Irreps, attr: o3.Irreps) -> None:
        super().__init__()
        self.message1 = _GatedTP((hidden + hidden + o3.Irreps("2x0e")).simplify(), attr, hidden)
        self.message2 = _GatedTP(hidden, attr, hidden)
        self.update1 = _GatedTP((hidden + hidden).simplify(), attr, hidden)
        self.update2 = o3.FullyConnectedTensorProduct(hidden, attr, hidden)

    def forward(
        self,
        h: torch.Tensor,
        edge_attr: torch.Tensor,
        node_attr: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        edge_scalars: torch.Tensor,
        inv_degree: float,
    ) -> torch.Tensor:
        m = self.message1(torch.cat([h[dst], h[src], edge_scalars], dim=-1), edge_attr)
        m = self.message2(m, edge_attr)
        agg = h.new_zeros(h.shape[0], m.shape[-1]).index_add(0, dst, m) * inv_degree
        u = self.update1(torch.cat([h, agg], dim=-1), node_attr)
        return h + self.update2(u, node_attr)


class SEGNN(nn.Module):
    """Steerable E(3)-equivariant GNN for N-body prediction (fully connected systems of ``num_nodes`` particles).

    Node input features: ``|v|`` (0e), charge (0e), position centred per system (1o), velocity (1o). Edge attributes
    are spherical harmonics of relative positions up to ``lmax_attr``; node attributes are the mean of the edge
    attributes plus the harmonics of the velocity. The output is ``pos + displacement``.

    Args:
        hidden_irreps: hidden node features, e.g. ``"16x0e+16x1o"``.
        num_layers: message-passing layers.
        lmax_attr: degree of the spherical-harmonic attributes.
    """

    def __init__(self, hidden_irreps: str = "16x0e+16x1o", num_layers: int = 4, lmax_attr: int = 1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if lmax_attr < 0:
            raise ValueError(f"lmax_attr must be >= 0, got {lmax_attr}")
        self.hidden_irreps = o3.Irreps(hidden_irreps)
        self.irreps_in = o3.Irreps("2x0e+2x1o")
        self.irreps_attr = o3.Irreps.spherical_harmonics(lmax_attr)
        self.sh = o3.SphericalHarmonics(self.irreps_attr, normalize=True, normalization="integral")
        self.embed = o3.FullyConnectedTensorProduct(self.irreps_in, self.irreps_attr, self.hidden_irreps)
        self.layers = nn.ModuleList(_SEGNNLayer(self.hidden_irreps, self.irreps_attr) for _ in range(num_layers))
        self.readout1 = _GatedTP(self.hidden_irreps, self.irreps_attr, self.hidden_irreps)
        self.readout2 = o3.Linear(self.hidden_irreps, "1x1o")

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        num_systems, num_nodes = pos.shape[0], pos.shape[1]
        x = pos.reshape(-1, 3)
        v = vel.reshape(-1, 3)
        q = charges.reshape(-1, 1)
        centred = (pos - pos.mean(dim=1, keepdim=True)).reshape(-1, 3)  # per system, never per particle
        src, dst = fully_connected_edges(num_systems, num_nodes, pos.device)
        rel = x[dst] - x[src]
        edge_scalars = torch.cat([(rel * rel).sum(-1, keepdim=True), q[dst] * q[src]], dim=-1)
        edge_attr = self.sh(rel)
        inv_degree = 1.0 / (num_nodes - 1)
        node_attr = edge_attr.new_zeros(x.shape[0], edge_attr.shape[-1]).index_add(0, dst, edge_attr) * inv_degree
        node_attr = node_attr + self.sh(v)
        h = torch.cat([v.norm(dim=-1, keepdim=True), q, centred, v], dim=-1)
        h = self.embed(h, node_attr)
        for layer in self.layers:
            h = layer(h, edge_attr, node_attr, src, dst, edge_scalars, inv_degree)
        h = self.readout1(h, node_attr)
        return pos + self.readout2(h).reshape(num_systems, num_nodes, 3)
