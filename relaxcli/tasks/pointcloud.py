"""The point-cloud task: procedurally sampled shape surfaces, classified by a rotation-invariant VN-PointNet.

Each sample is one of the shapes below with its own random proportions ("anisotropic but rotation-free scale": the
proportions are set along the shape's own axes), N points drawn uniformly (exactly, by area) on its surface, then a
uniformly random rotation (Haar on SO(3), drawn in float64). The label is the shape class. Shapes are centred on
their bounding box, not on the mean of the points; models should centre per shape.

Samples are generated in blocks of ``POINTCLOUD_BLOCK``, each from its own stream
``SeedSequence(seed, spawn_key=(split_id, block))``, so a split's first k samples do not depend on its size and
generation is vectorised within a block. Labels are balanced within each block (a random permutation of
``arange(block) % num_classes``).

Example:
    >>> data = PointCloudData(train=256, val=64, test=64, num_points=64)
    >>> (points,), label = data.train[0]; points.shape
    torch.Size([64, 3])
    >>> VNPointNet(num_classes=8)(points[None]).shape
    torch.Size([1, 8])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..ops.vector_neurons import VNLinear
from .cache import SPLITS, cache_folder, cached, split_sizes

__all__ = [
    "POINTCLOUD_VERSION",
    "POINTCLOUD_CLASSES",
    "sample_shapes",
    "shape_surface_residual",
    "PointCloudSplit",
    "PointCloudData",
    "VNLeakyReLU",
    "VNPointNet",
]


#: Bump whenever the generated numbers could change; it is part of every point-cloud cache key.
POINTCLOUD_VERSION = "pointcloud-v1"

#: The shape classes, in label order.
POINTCLOUD_CLASSES: tuple[str, ...] = (
    "sphere",
    "box",
    "cylinder",
    "cone",
    "torus",
    "tetrahedron",
    "octahedron",
    "capsule",
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
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )


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
        blocks.append({"points": points, "labels": labels.astype(np.int64), "params": params, "rotations": rotations})
    if not blocks:
        return {
            "points": np.zeros((0, N, 3)),
            "labels": np.zeros(0, np.int64),
            "params": np.zeros((0, 3)),
            "rotations": np.zeros((0, 3, 3)),
        }
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

    def __init__(
        self, arrays: dict[str, np.ndarray], name: str = "", classes: tuple[str, ...] = POINTCLOUD_CLASSES
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
        cache_dir: cache folder; default :func:`~relaxcli.tasks.cache.default_cache_dir`.
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
        self.cache_dir = cache_folder(cache_dir, cache)
        self.sizes = split_sizes(train, val, test)
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
        arrays, from_cache, self.cache_paths[split] = cached(
            self.cache_dir,
            "pointcloud",
            split,
            self.split_params(split),
            POINTCLOUD_KEYS,
            lambda: sample_shapes(
                self.sizes[split],
                np.random.SeedSequence(self.seed, spawn_key=(SPLITS.index(split),)),
                num_points=self.num_points,
                noise=self.noise,
                rotate=self.rotate,
                classes=self.classes,
            ),
        )
        self.sources[split] = "cache" if from_cache else "generated"
        return PointCloudSplit(arrays, split, self.classes)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (
            f"PointCloudData({sizes}, num_points={self.num_points}, seed={self.seed}, noise={self.noise}, "
            f"classes={len(self.classes)})"
        )


# ----------------------------------------------------------------------------------------------------------
# VN-PointNet: a rotation-invariant point-cloud classifier built from Vector-Neuron layers (Deng et al., 2021)
# ----------------------------------------------------------------------------------------------------------


class VNLeakyReLU(nn.Module):
    """Vector-Neuron leaky ReLU on ``[B, C, 3, ...]``: per channel a direction ``k = VNLinear(x)`` is learnt, and
    ``q`` is kept where ``⟨q, k⟩ >= 0`` and replaced by ``q − (⟨q, k⟩ / (‖k‖² + eps)) k`` (its component orthogonal
    to ``k``) elsewhere; the result is ``slope · q + (1 − slope) · that``. Equivariant under all of O(3): only inner
    products of vectors enter the gate.
    """

    def __init__(self, channels: int, negative_slope: float = 0.2, eps: float = 1e-6) -> None:
        super().__init__()
        self.direction = VNLinear(channels, channels)
        self.negative_slope, self.eps = float(negative_slope), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.direction(x)
        dot = (x * k).sum(dim=2, keepdim=True)
        k_norm2 = (k * k).sum(dim=2, keepdim=True)
        relu = torch.where(dot >= 0, x, x - (dot / (k_norm2 + self.eps)) * k)
        return self.negative_slope * x + (1.0 - self.negative_slope) * relu

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, eps={self.eps}"


class VNPointNet(nn.Module):
    """Rotation- (and reflection- and translation-) invariant point-cloud classifier from Vector-Neuron layers.

    Input ``points [B, N, 3]``; output logits ``[B, num_classes]``, invariant under ``points -> points Rᵀ + t`` for
    every orthogonal ``R`` (O(3), reflections included) and permutation-invariant over the points.

    1. Centre each cloud on its mean, and lift every point to VN channels ``[B, C0, 3, N]``: the centred point
       ``x_i``, ``M x_i`` with the cloud's second moment ``M = mean_j x_j x_jᵀ`` (a direction that a single-vector
       lift cannot give: VN layers are odd, so a lift of ``x_i`` alone stays parallel to ``x_i``), and, with ``k``,
       the local mean offset ``Σ_j w_ij (x_j − x_i)`` over the ``k`` nearest neighbours with weights
       ``w_ij ∝ d²_(k+1) − d²_ij`` that fall continuously to 0 at the edge of the neighbourhood (so swaps of equally
       distant neighbours under float rounding do not jump).
    2. ``num_layers`` blocks of ``VNLinear`` + :class:`VNLeakyReLU` (each gate owns a ``VNLinear`` too).
    3. Concatenate the cloud's mean feature to every point (as VN-PointNet does), learn a frame of 3 vectors per point
       with a ``VNLinear``, and take the inner products of every channel with it: ``6 · hidden`` invariant scalars per
       point. Invariants are formed *per point, before pooling*: a pooled VN vector of a centrally symmetric cloud
       (sphere, box, cylinder, torus, ...) is zero for any O(3)-equivariant network.
    4. Mean- and max-pool the invariants over points; ``BatchNorm1d`` (as in PointNet's head; it trains several
       times faster here than ``LayerNorm``) and an ``nn.Linear`` MLP give the logits. Being batch-normalised, the
       model needs batches of at least 2 clouds in training mode.

    All shapes are static and there is no data-dependent Python control flow, so ``torch.fx`` traces it and
    :func:`relaxcli.relax` finds every ``VNLinear`` (``2 · num_layers + 1`` sites).

    Args:
        num_classes: number of output logits.
        hidden: VN channels per layer.
        num_layers: VN blocks (at least 1).
        k: neighbours for the local feature (None: no local feature).
        negative_slope: of the VN leaky ReLUs.
        eps: of the VN leaky ReLUs. The gate's learnt direction ``d / ‖d‖`` is ill-conditioned where ``‖d‖ -> 0``; with
            Deng et al.'s 1e-6, float32 rounding is amplified ~10x there and invariance errors of 1e-5 appear. 1e-3
            (small next to the typical ``‖d‖² ~ 0.01-1`` of unit-size clouds) keeps them near 1e-6.
    """

    def __init__(
        self,
        num_classes: int,
        hidden: int = 32,
        num_layers: int = 3,
        k: int | None = None,
        negative_slope: float = 0.2,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if k is not None and k < 1:
            raise ValueError(f"k must be None or at least 1, got {k}")
        self.num_classes, self.hidden, self.num_layers, self.k = int(num_classes), int(hidden), int(num_layers), k
        in_channels = 2 if k is None else 3
        self.linears = nn.ModuleList(VNLinear(in_channels if i == 0 else hidden, hidden) for i in range(num_layers))
        self.acts = nn.ModuleList(VNLeakyReLU(hidden, negative_slope, eps) for _ in range(num_layers))
        self.frame = VNLinear(2 * hidden, 3)
        features = 2 * (2 * hidden * 3)  # (mean, max) x (channels x frame vectors)
        self.head = nn.Sequential(
            nn.BatchNorm1d(features), nn.Linear(features, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, num_classes)
        )

    def lift(self, points: torch.Tensor) -> torch.Tensor:
        """``[B, N, 3]`` points -> ``[B, C0, 3, N]`` VN features (equivariant; translation-invariant)."""
        x = points - points.mean(dim=1, keepdim=True)
        moment = torch.einsum("bni,bnj->bij", x, x) / x.shape[1]
        channels = [x, torch.einsum("bni,bij->bnj", x, moment)]
        if self.k is not None:
            channels.append(self.local_offset(x, self.k))
        return torch.stack(channels, dim=1).transpose(2, 3)

    @staticmethod
    def local_offset(x: torch.Tensor, k: int) -> torch.Tensor:
        """``Σ_j w_ij (x_j − x_i)`` over the ``k + 1`` nearest points (self included), ``w ∝ relu(d²_max − d²)``."""
        n = x.shape[1]
        idx = torch.cdist(x, x).topk(k + 1, dim=-1, largest=False).indices  # [B, N, k+1]; used only for selection
        nbrs = torch.gather(x.unsqueeze(1).expand(-1, n, -1, -1), 2, idx.unsqueeze(-1).expand(-1, -1, -1, 3))
        rel = nbrs - x.unsqueeze(2)  # exact differences: [B, N, k+1, 3]
        d2 = (rel * rel).sum(dim=-1)
        w = torch.relu(d2.amax(dim=-1, keepdim=True) - d2)
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return (w.unsqueeze(-1) * rel).sum(dim=2)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        h = self.lift(points)
        for linear, act in zip(self.linears, self.acts):
            h = act(linear(h))
        h = torch.cat([h, h.mean(dim=-1, keepdim=True).expand_as(h)], dim=1)  # [B, 2H, 3, N]
        frame = self.frame(h)  # [B, 3, 3, N]
        inv = torch.einsum("bcin,bfin->bcfn", h, frame).flatten(1, 2)  # [B, 6H, N], invariant per point
        pooled = torch.cat([inv.mean(dim=-1), inv.amax(dim=-1)], dim=1)
        return self.head(pooled)
