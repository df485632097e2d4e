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
    >>> from relaxcli.data import NBodyData
    >>> data = NBodyData(train=3000, val=2000, test=2000, seed=0)
    >>> (pos, vel, q), target = next(iter(DataLoader(data.train, batch_size=100)))
    >>> pos.shape, vel.shape, q.shape, target.shape
    (torch.Size([100, 5, 3]), torch.Size([100, 5, 3]), torch.Size([100, 5, 1]), torch.Size([100, 5, 3]))
    >>> data.baselines("test")            # sanity anchors: about 0.27 and 0.11
    {'no_motion': 0.27..., 'constant_velocity': 0.11...}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

__all__ = [
    "SIMULATOR_VERSION",
    "SPLITS",
    "simulate_charged_nbody",
    "baseline_mse",
    "default_cache_dir",
    "NBodySplit",
    "NBodyData",
]

#: Bump whenever the simulated numbers could change; it is part of every cache key.
SIMULATOR_VERSION = "charged-nbody-v1"

#: Split names, in the order of their random-stream ids.
SPLITS: tuple[str, ...] = ("train", "val", "test")

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
    dt = dtype.type(DT)
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


def default_cache_dir() -> Path:
    """``$RELAX_CACHE`` if set, else ``~/.cache/relaxcli``."""
    env = os.environ.get("RELAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "relaxcli"


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
        cache_dir: cache folder; default :func:`default_cache_dir`.
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
        self.cache_dir: Path | None = (
            (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) if cache else None
        )
        self.sizes = {"train": int(train), "val": int(val), "test": int(test)}
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

    def _cache_path(self, split: str, params: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"nbody-{split}-{digest}.npz"

    def _load(self, split: str) -> NBodySplit:
        params = self.split_params(split)
        meta = json.dumps(params, sort_keys=True)
        path = self._cache_path(split, params)
        self.cache_paths[split] = path
        if path is not None and path.is_file():
            arrays = _read_npz(path, meta, ARRAY_KEYS)
            if arrays is not None:
                self.sources[split] = "cache"
                return NBodySplit(arrays, split)
        arrays = simulate_charged_nbody(
            self.sizes[split],
            np.random.SeedSequence([self.seed, SPLITS.index(split)]),
            num_particles=self.num_particles,
            frames=self.frames,
            field=self.field,
            dtype=np.float64,
        )
        self.sources[split] = "simulated"
        if path is not None:
            _write_npz(path, arrays, meta, ARRAY_KEYS)
        return NBodySplit(arrays, split)

    # -- helpers -----------------------------------------------------------------------------------------

    def baselines(self, split: str = "test") -> dict[str, float]:
        """No-motion and constant-velocity MSE on ``split`` (about 0.27 and 0.11 for ``nbody_small``)."""
        return baseline_mse(self.splits[split].arrays, self.frames)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"NBodyData({sizes}, seed={self.seed}, field={self.field}, frames={self.frames})"


def _read_npz(path: Path, meta: str, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays ``keys``, or ``None`` if the file is unreadable, incomplete or for other parameters."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["meta"]) != meta:
                return None
            return {key: npz[key] for key in keys}
    except (OSError, KeyError, ValueError):
        return None


def _write_npz(path: Path, arrays: dict[str, np.ndarray], meta: str, keys: tuple[str, ...]) -> None:
    """Write ``arrays[keys]`` (plus ``meta``) atomically: a temp file, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(meta), **{key: arrays[key] for key in keys})
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ----------------------------------------------------------------------------------------------------------
# Point clouds: procedurally sampled shape surfaces (the Vector-Neuron classification task)
# ----------------------------------------------------------------------------------------------------------
#
# Each sample is one of the shapes below with its own random proportions ("anisotropic but rotation-free scale":
# the proportions are set along the shape's own axes), N points drawn uniformly (exactly, by area) on its surface,
# then a uniformly random rotation (Haar on SO(3), drawn in float64). The label is the shape class. Shapes are
# centred on their bounding box, not on the mean of the points; models should centre per shape.
#
# Samples are generated in blocks of POINTCLOUD_BLOCK, each from its own stream
# ``SeedSequence(seed, spawn_key=(split_id, block))``, so a split's first k samples do not depend on its size and
# generation is vectorised within a block. Labels are balanced within each block (a random permutation of
# ``arange(block) % num_classes``).

#: Bump whenever the generated numbers could change; it is part of every point-cloud cache key.
POINTCLOUD_VERSION = "pointcloud-v1"

#: The shape classes, in label order.
POINTCLOUD_CLASSES: tuple[str, ...] = (
    "sphere", "box", "cylinder", "cone", "torus", "tetrahedron", "octahedron", "capsule",
)

#: Samples per random stream (see above).
POINTCLOUD_BLOCK = 64

POINTCLOUD_KEYS: tuple[str, ...] = ("points", "labels", "params", "rotations")

# Per class: low and high of the three uniform shape parameters (``params[:, k]``), in the shape's own frame.
#   sphere       semi-axes a, b, c (a slightly squashed sphere: an ellipsoid close to round)
#   box          half-sides
#   cylinder     radius, half-height, unused
#   cone         base radius, height (apex up, z in [-h/2, h/2]), unused
#   torus        major radius R, tube radius r, unused
#   tetrahedron  per-axis factors applied to the vertices (1,1,1), (1,-1,-1), (-1,1,-1), (-1,-1,1)
#   octahedron   per-axis factors applied to the vertices ±e_x, ±e_y, ±e_z
#   capsule      radius, half-length of the cylindrical part, unused
_SHAPE_RANGES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "sphere": ((0.8, 0.8, 0.8), (1.2, 1.2, 1.2)),
    "box": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
    "cylinder": ((0.45, 0.55, 0.0), (0.8, 1.0, 0.0)),
    "cone": ((0.55, 1.2, 0.0), (0.9, 1.9, 0.0)),
    "torus": ((0.65, 0.2, 0.0), (0.85, 0.35, 0.0)),
    "tetrahedron": ((0.55, 0.55, 0.55), (0.85, 0.85, 0.85)),
    "octahedron": ((0.8, 0.8, 0.8), (1.25, 1.25, 1.25)),
    "capsule": ((0.3, 0.35, 0.0), (0.5, 0.75, 0.0)),
}

_TETRA_VERTICES = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
_TETRA_FACES = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])  # face k is opposite vertex k
_OCTA_VERTICES = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
_OCTA_FACES = np.array([[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)])


def _choose(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """``[M, n]`` indices drawn with per-row probabilities proportional to ``weights [M, K]``."""
    cum = np.cumsum(weights, axis=1)
    cum = cum / cum[:, -1:]
    u = rng.random((weights.shape[0], n))
    return np.minimum((u[..., None] >= cum[:, None, :]).sum(-1), weights.shape[1] - 1)


def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal((*shape, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _disk(rng: np.random.Generator, radius: np.ndarray, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points of disks of radius ``radius [M, 1]``: their x and y, ``[M, n]`` each."""
    rho = radius * np.sqrt(rng.random((m, n)))
    phi = 2 * np.pi * rng.random((m, n))
    return rho * np.cos(phi), rho * np.sin(phi)


def _sample_ellipsoid(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    """Exactly uniform on the ellipsoid with semi-axes ``p``: directions accepted with the area element's density."""
    m = p.shape[0]
    out = np.empty((m, n, 3))
    filled = np.zeros(m, dtype=np.int64)
    prod = p.prod(axis=1, keepdims=True)  # [M, 1]
    gmax = (prod / p.min(axis=1, keepdims=True))[:, 0]
    while (filled < n).any():
        rows = np.nonzero(filled < n)[0]
        u = _unit_vectors(rng, (len(rows), 2 * n))
        # area element of x = diag(p) u relative to the unit sphere: sqrt(sum_i (prod / p_i)^2 u_i^2)
        g = np.sqrt((((prod[rows] / p[rows])[:, None, :] * u) ** 2).sum(-1))
        accept = rng.random(g.shape) * gmax[rows, None] < g
        slot = filled[rows, None] + np.cumsum(accept, axis=1) - 1
        keep = accept & (slot < n)
        r_idx, c_idx = np.nonzero(keep)
        out[rows[r_idx], slot[r_idx, c_idx]] = u[r_idx, c_idx] * p[rows[r_idx]]
        filled[rows] = np.minimum(n, filled[rows] + accept.sum(axis=1))
    return out


def _sample_box(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    m = p.shape[0]
    face_area = np.stack([p[:, 1] * p[:, 2], p[:, 0] * p[:, 2], p[:, 0] * p[:, 1]], axis=1)
    axis = _choose(rng, face_area, n)  # [M, n]: the axis the face is perpendicular to
    sign = np.where(rng.random((m, n)) < 0.5, -1.0, 1.0)
    pts = (2 * rng.random((m, n, 3)) - 1) * p[:, None, :]
    onehot = axis[..., None] == np.arange(3)
    return np.where(onehot, sign[..., None] * p[:, None, :], pts)


def _sample_cylinder(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    m = p.shape[0]
    r, hh = p[:, 0:1], p[:, 1:2]
    part = _choose(rng, np.stack([2 * np.pi * r[:, 0] * 2 * hh[:, 0], 2 * np.pi * r[:, 0] ** 2], axis=1), n)
    phi = 2 * np.pi * rng.random((m, n))
    z_side = hh * (2 * rng.random((m, n)) - 1)
    dx, dy = _disk(rng, r, m, n)
    z_cap = np.where(rng.random((m, n)) < 0.5, -hh, hh)
    side = part == 0
    x = np.where(side, r * np.cos(phi), dx)
    y = np.where(side, r * np.sin(phi), dy)
    z = np.where(side, z_side, z_cap)
    return np.stack([x, y, z], axis=-1)


def _sample_cone(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    m = p.shape[0]
    r, h = p[:, 0:1], p[:, 1:2]
    slant = np.sqrt(r**2 + h**2)
    part = _choose(rng, np.concatenate([np.pi * r * slant, np.pi * r**2], axis=1), n)
    t = np.sqrt(rng.random((m, n)))  # distance from the apex as a fraction of the slant (area grows like t^2)
    phi = 2 * np.pi * rng.random((m, n))
    dx, dy = _disk(rng, r, m, n)
    side = part == 0
    x = np.where(side, r * t * np.cos(phi), dx)
    y = np.where(side, r * t * np.sin(phi), dy)
    z = np.where(side, h / 2 - h * t, -h / 2 + 0 * t)
    return np.stack([x, y, z], axis=-1)


def _sample_torus(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    m = p.shape[0]
    big, small = p[:, 0:1], p[:, 1:2]
    theta = 2 * np.pi * rng.random((m, n))
    # tube angle with density ∝ R + r cos(phi): invert phi + (r/R) sin(phi) = 2π u by Newton's method (monotone)
    target = 2 * np.pi * rng.random((m, n))
    c = small / big
    phi = target.copy()
    for _ in range(30):
        phi -= (phi + c * np.sin(phi) - target) / (1 + c * np.cos(phi))
    ring = big + small * np.cos(phi)
    return np.stack([ring * np.cos(theta), ring * np.sin(theta), small * np.sin(phi)], axis=-1)


def _sample_polyhedron(rng: np.random.Generator, vertices: np.ndarray, faces: np.ndarray, n: int) -> np.ndarray:
    """Uniform on the triangulated surface; ``vertices [M, V, 3]`` per sample, ``faces [F, 3]`` shared."""
    m = vertices.shape[0]
    a, b, c = vertices[:, faces[:, 0]], vertices[:, faces[:, 1]], vertices[:, faces[:, 2]]  # [M, F, 3]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=-1)
    face = _choose(rng, area, n)  # [M, n]
    rows = np.arange(m)[:, None]
    fa, fb, fc = a[rows, face], b[rows, face], c[rows, face]
    s = np.sqrt(rng.random((m, n, 1)))
    t = rng.random((m, n, 1))
    return (1 - s) * fa + s * (1 - t) * fb + s * t * fc


def _sample_tetrahedron(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    return _sample_polyhedron(rng, _TETRA_VERTICES[None] * p[:, None, :], _TETRA_FACES, n)


def _sample_octahedron(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    return _sample_polyhedron(rng, _OCTA_VERTICES[None] * p[:, None, :], _OCTA_FACES, n)


def _sample_capsule(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    m = p.shape[0]
    r, half = p[:, 0:1], p[:, 1:2]
    part = _choose(rng, np.concatenate([2 * np.pi * r * 2 * half, 4 * np.pi * r**2], axis=1), n)
    phi = 2 * np.pi * rng.random((m, n))
    z_side = half * (2 * rng.random((m, n)) - 1)
    u = _unit_vectors(rng, (m, n))
    cap = r[..., None] * u
    cap[..., 2] += np.where(u[..., 2] >= 0, half, -half)
    side = np.stack([r * np.cos(phi), r * np.sin(phi), z_side], axis=-1)
    return np.where((part == 0)[..., None], side, cap)


_SHAPE_SAMPLERS = {
    "sphere": _sample_ellipsoid,
    "box": _sample_box,
    "cylinder": _sample_cylinder,
    "cone": _sample_cone,
    "torus": _sample_torus,
    "tetrahedron": _sample_tetrahedron,
    "octahedron": _sample_octahedron,
    "capsule": _sample_capsule,
}


def _random_rotations(rng: np.random.Generator, m: int) -> np.ndarray:
    """``[M, 3, 3]`` Haar-random rotations (unit quaternions from a 4D normal), float64."""
    q = rng.standard_normal((m, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def _check_classes(classes: Any) -> tuple[str, ...]:
    names = tuple(POINTCLOUD_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in _SHAPE_SAMPLERS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {POINTCLOUD_CLASSES}, got {list(names)}")
    return names


def sample_shapes(
    num_samples: int,
    seed: int | np.random.SeedSequence,
    num_points: int = 256,
    noise: float = 0.0,
    rotate: bool = True,
    classes: Any = None,
) -> dict[str, np.ndarray]:
    """Sample labelled point clouds of shape surfaces (all in float64).

    Args:
        num_samples: number of clouds ``M`` (0 is allowed).
        seed: an int >= 0 or a ``SeedSequence``; block ``k`` is drawn from ``SeedSequence(entropy,
            spawn_key=(*spawn_key, k))``, so the first samples do not depend on ``num_samples``.
        num_points: points per cloud ``N``.
        noise: standard deviation of isotropic Gaussian noise added to every point (after the rotation).
        rotate: apply the random rotation. The rotations are drawn either way, so ``rotate=False`` gives exactly
            the unrotated clouds of ``rotate=True``: ``points_rotated = points @ rotations[i].T`` (noise aside).
        classes: class names to use (default :data:`POINTCLOUD_CLASSES`); labels index this list.

    Returns:
        ``points [M, N, 3]``, ``labels [M]`` (int64), ``params [M, 3]`` (the shape parameters in the shape's own
        frame, see ``_SHAPE_RANGES``), ``rotations [M, 3, 3]`` (the rotation drawn for each sample).
    """
    names = _check_classes(classes)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    M, N, B = int(num_samples), int(num_points), POINTCLOUD_BLOCK
    lo = np.array([_SHAPE_RANGES[c][0] for c in names])
    hi = np.array([_SHAPE_RANGES[c][1] for c in names])
    blocks = []
    for k in range(-(-M // B)):
        rng = np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, k)))
        labels = rng.permutation(np.arange(B) % len(names))
        params = lo[labels] + (hi[labels] - lo[labels]) * rng.random((B, 3))
        rotations = _random_rotations(rng, B)
        points = np.empty((B, N, 3))
        for c, name in enumerate(names):
            rows = np.nonzero(labels == c)[0]
            if len(rows):
                points[rows] = _SHAPE_SAMPLERS[name](rng, params[rows], N)
        if rotate:
            points = np.einsum("bij,bnj->bni", rotations, points)
        if noise:
            points = points + float(noise) * rng.standard_normal(points.shape)
        blocks.append({"points": points, "labels": labels.astype(np.int64), "params": params,
                       "rotations": rotations})
    if not blocks:
        return {"points": np.zeros((0, N, 3)), "labels": np.zeros(0, np.int64), "params": np.zeros((0, 3)),
                "rotations": np.zeros((0, 3, 3))}
    return {key: np.concatenate([b[key] for b in blocks])[:M] for key in POINTCLOUD_KEYS}


def shape_surface_residual(points: np.ndarray, label: int, params: np.ndarray, classes: Any = None) -> np.ndarray:
    """Distance-like residual ``[..., N]`` of points in the shape's own frame (unrotated, noise-free) from the
    surface of class ``label`` with parameters ``params [3]``: zero (to rounding) for points on the surface.

    For rotated clouds pass ``points @ rotation`` (i.e. apply the inverse rotation first).
    """
    name = _check_classes(classes)[int(label)]
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    p = np.asarray(params, dtype=np.float64)
    if name == "sphere":
        return np.sqrt(((points / p) ** 2).sum(-1)) - 1
    if name == "box":
        return np.abs(np.abs(points) / p).max(-1) - 1
    if name in ("cylinder", "cone"):
        rho = np.hypot(x, y)
        if name == "cylinder":
            r, hh = p[0], p[1]
            side = np.maximum(np.abs(rho - r), np.maximum(np.abs(z) - hh, 0))
            caps = np.maximum(np.abs(np.abs(z) - hh), np.maximum(rho - r, 0))
        else:
            r, h = p[0], p[1]
            side = np.maximum(np.abs(rho - r * (h / 2 - z) / h), np.maximum(np.abs(z) - h / 2, 0))
            caps = np.maximum(np.abs(z + h / 2), np.maximum(rho - r, 0))
        return np.minimum(side, caps)
    if name == "torus":
        return np.hypot(np.hypot(x, y) - p[0], z) - p[1]
    if name == "capsule":
        zc = np.clip(z, -p[1], p[1])
        return np.sqrt(x**2 + y**2 + (z - zc) ** 2) - p[0]
    if name == "octahedron":
        return (np.abs(points) / p).sum(-1) - 1
    # tetrahedron: barycentric coordinates (dimensionless); on the surface iff the smallest is 0
    verts = _TETRA_VERTICES * p
    lam123 = np.linalg.solve((verts[1:] - verts[0]).T, (points - verts[0]).reshape(-1, 3).T).T
    lam = np.concatenate([1 - lam123.sum(-1, keepdims=True), lam123], axis=-1).reshape(*points.shape[:-1], 4)
    return np.abs(lam.min(-1))  # 0 exactly when the smallest is 0 and the others are >= 0


class PointCloudSplit(Dataset):
    """One split as a map-style dataset of ``((points [N, 3],), label)``: float32 points, an int64 label.

    ``arrays`` keeps the generator output (float64 points, parameters and rotations) for analysis.
    """

    def __init__(self, arrays: dict[str, np.ndarray], name: str = "", classes: tuple[str, ...] = POINTCLOUD_CLASSES
                 ) -> None:
        self.name = name
        self.arrays = arrays
        self.classes = classes
        self.points = torch.as_tensor(np.asarray(arrays["points"], dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(arrays["labels"], dtype=np.int64))

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        return (self.points[index],), self.labels[index]

    def __repr__(self) -> str:
        return f"PointCloudSplit({self.name!r}, {len(self)} clouds, {len(self.classes)} classes)"


class PointCloudData:
    """Rotated shape classification: ``train``, ``val`` and ``test`` splits of labelled surface point clouds.

    Each split is drawn from its own streams (``SeedSequence(seed, spawn_key=(split_id, block))``), so the splits
    are independent and a smaller split is a prefix of a larger one. Each split is cached as
    ``pointcloud-<split>-<hash>.npz`` under ``cache_dir`` (the hash covers every parameter that affects the
    numbers, including :data:`POINTCLOUD_VERSION`).

    Args:
        train, val, test: number of clouds per split.
        num_points: points per cloud.
        seed: base seed (an int >= 0).
        cache_dir: cache folder; default :func:`default_cache_dir`.
        noise: standard deviation of Gaussian noise on every point.
        rotate: randomly rotate each cloud (``False`` gives the shapes in their own frames, for checks).
        classes: the class names to use (default :data:`POINTCLOUD_CLASSES`); labels index this list.
        cache: set ``False`` to neither read nor write the cache.

    Example::

        >>> data = PointCloudData(train=512, val=256, test=256)
        >>> (points,), label = data.train[0]
        >>> points.shape, label.dtype
        (torch.Size([256, 3]), torch.int64)
    """

    def __init__(
        self,
        train: int = 2000,
        val: int = 500,
        test: int = 500,
        num_points: int = 256,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        noise: float = 0.0,
        rotate: bool = True,
        classes: Any = None,
        cache: bool = True,
    ) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if float(noise) < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.seed = int(seed)
        self.num_points = int(num_points)
        self.noise = float(noise) + 0.0
        self.rotate = bool(rotate)
        self.classes = _check_classes(classes)
        self.cache_dir: Path | None = (
            (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) if cache else None
        )
        self.sizes = {"train": int(train), "val": int(val), "test": int(test)}
        self.sources: dict[str, str] = {}
        self.cache_paths: dict[str, Path | None] = {}
        self.splits: dict[str, PointCloudSplit] = {name: self._load(name) for name in SPLITS}
        self.train, self.val, self.test = self.splits["train"], self.splits["val"], self.splits["test"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_params(self, split: str) -> dict[str, Any]:
        """Every parameter that determines the numbers of ``split`` (the cache key is a hash of this)."""
        return {
            "version": POINTCLOUD_VERSION,
            "split": split,
            "split_id": SPLITS.index(split),
            "seed": self.seed,
            "num_samples": self.sizes[split],
            "num_points": self.num_points,
            "noise": self.noise,
            "rotate": self.rotate,
            "classes": list(self.classes),
            "block": POINTCLOUD_BLOCK,
            "ranges": {c: [list(r) for r in _SHAPE_RANGES[c]] for c in self.classes},
        }

    def _load(self, split: str) -> PointCloudSplit:
        params = self.split_params(split)
        meta = json.dumps(params, sort_keys=True)
        path = None
        if self.cache_dir is not None:
            digest = hashlib.sha256(meta.encode()).hexdigest()[:20]
            path = self.cache_dir / f"pointcloud-{split}-{digest}.npz"
        self.cache_paths[split] = path
        if path is not None and path.is_file():
            arrays = _read_npz(path, meta, POINTCLOUD_KEYS)
            if arrays is not None:
                self.sources[split] = "cache"
                return PointCloudSplit(arrays, split, self.classes)
        arrays = sample_shapes(
            self.sizes[split],
            np.random.SeedSequence(self.seed, spawn_key=(SPLITS.index(split),)),
            num_points=self.num_points,
            noise=self.noise,
            rotate=self.rotate,
            classes=self.classes,
        )
        self.sources[split] = "generated"
        if path is not None:
            _write_npz(path, arrays, meta, POINTCLOUD_KEYS)
        return PointCloudSplit(arrays, split, self.classes)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (f"PointCloudData({sizes}, num_points={self.num_points}, seed={self.seed}, noise={self.noise}, "
                f"classes={len(self.classes)})")


__all__ += [
    "POINTCLOUD_VERSION",
    "POINTCLOUD_CLASSES",
    "sample_shapes",
    "shape_surface_residual",
    "PointCloudSplit",
    "PointCloudData",
]


# ---------------------------------------------------------------------------------------------------------------
# Phase fields on a periodic grid (Allen-Cahn): a task with exact C4 / D4 symmetry for steerable CNNs


def simulate_allen_cahn(u0: np.ndarray, steps: int = 20, dt: float = 0.1, diffusion: float = 1.0) -> np.ndarray:
    """Explicit Euler steps of ``u_t = D Δu + u − u³`` on a periodic grid (5-point Laplacian), ``u0 [..., H, W]``.

    The stencil and the reaction term commute with rotations by 90° and with flips of a square periodic grid, so the
    map ``u0 -> u_T`` is exactly D4-equivariant (in floating point too: the stencil sums the same four neighbours).
    """
    u = np.asarray(u0, dtype=np.float64).copy()
    for _ in range(steps):
        lap = (np.roll(u, 1, -1) + np.roll(u, -1, -1) + np.roll(u, 1, -2) + np.roll(u, -1, -2)) - 4 * u
        u = u + dt * (diffusion * lap + u - u**3)
    return u


def smooth_fields(rng: np.random.Generator, n: int, size: int, length_scale: float = 3.0) -> np.ndarray:
    """``n`` random fields ``[n, size, size]``: white noise low-pass filtered with a Gaussian of ``length_scale``
    pixels on the periodic grid, each scaled to unit root-mean-square."""
    noise = rng.standard_normal((n, size, size))
    k = np.fft.fftfreq(size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    filt = np.exp(-2 * (np.pi * length_scale) ** 2 * k2)
    fields = np.fft.ifft2(np.fft.fft2(noise) * filt).real
    return fields / np.sqrt((fields**2).mean(axis=(-2, -1), keepdims=True))


class FieldSplit(Dataset):
    """``((u0 [1, H, W],), u_T [1, H, W])`` pairs, float32."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, name: str = "") -> None:
        self.name = name
        self.inputs = torch.as_tensor(inputs[:, None].astype(np.float32))
        self.targets = torch.as_tensor(targets[:, None].astype(np.float32))

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        return (self.inputs[index],), self.targets[index]

    def __repr__(self) -> str:
        return f"FieldSplit({self.name!r}, {len(self)} fields of {tuple(self.inputs.shape[-2:])})"


class AllenCahnData:
    """The ``allen_cahn`` grid task: predict a phase field after ``steps`` Allen-Cahn steps from its initial state.

    Exact D4 symmetry (rotations by 90°, flips) on a periodic ``size x size`` grid; generated in well under a second,
    deterministic from ``seed`` (each split from its own stream, so a smaller split is a prefix of a larger one).

    Example:
        >>> data = AllenCahnData(train=64, val=32, test=32)
        >>> (u0,), u_t = data.train[0]; u0.shape
        torch.Size([1, 32, 32])
    """

    def __init__(self, train: int = 256, val: int = 128, test: int = 128, size: int = 32, steps: int = 20,
                 dt: float = 0.1, diffusion: float = 1.0, length_scale: float = 3.0, seed: int = 0) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if dt * diffusion > 0.25:
            raise ValueError(f"dt * diffusion = {dt * diffusion} > 0.25: the explicit scheme is unstable")
        self.sizes = {"train": int(train), "val": int(val), "test": int(test)}
        splits = {}
        for split_id, name in enumerate(SPLITS):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7, split_id]))
            u0 = smooth_fields(rng, self.sizes[name], size, length_scale)
            splits[name] = FieldSplit(u0, simulate_allen_cahn(u0, steps, dt, diffusion), name)
        self.train, self.val, self.test = splits["train"], splits["val"], splits["test"]

    def __repr__(self) -> str:
        return f"AllenCahnData({self.sizes})"


__all__ += ["simulate_allen_cahn", "smooth_fields", "FieldSplit", "AllenCahnData"]
