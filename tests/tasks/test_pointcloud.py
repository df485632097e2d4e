"""The point-cloud task: procedural shape data, the VN-PointNet classifier, its relaxation, and the recipe pair."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_json
from torch.utils.data import DataLoader

import relaxcli
import relaxcli.tasks.pointcloud as data_mod
from relaxcli import RelaxError
from relaxcli.core.reps import default_dtype
from relaxcli.ops.vector_neurons import VNLinear
from relaxcli.recipe import load_recipe
from relaxcli.run.build import load_model
from relaxcli.run.evaluation import accuracy
from relaxcli.tasks import VNPointNet
from relaxcli.tasks.pointcloud import POINTCLOUD_CLASSES, PointCloudData, sample_shapes, shape_surface_residual
from relaxcli.testing import equivariance_error

RECIPES = Path(relaxcli.__file__).parent / "recipes"
C = len(POINTCLOUD_CLASSES)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small tensors: one thread is faster, and much faster on a busy machine (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clouds() -> torch.Tensor:
    """Eight rotated clouds of 128 points, one per class, float32."""
    arrays = sample_shapes(64, seed=5, num_points=128)
    first = [int(np.nonzero(arrays["labels"] == c)[0][0]) for c in range(C)]
    return torch.as_tensor(arrays["points"][first], dtype=torch.float32)


def calibrated(model: VNPointNet, points: torch.Tensor) -> VNPointNet:
    """Set the head's BatchNorm statistics from ``points`` (so the logits are O(1), as after training); eval mode."""
    bn = model.head[0]
    bn.reset_running_stats()
    bn.momentum = None  # cumulative average: one batch gives exactly its statistics
    with torch.no_grad():
        model.train()(points)
    return model.eval()


def invariance(model: torch.nn.Module, points: torch.Tensor, seed: int = 0, translation: bool = False) -> float:
    gen = torch.Generator().manual_seed(seed)
    return equivariance_error(
        model, (points,), ["cartesian_points"], None, do_translation=translation, generator=gen
    ).relative


# --- data ---------------------------------------------------------------------------------------------------


def test_deterministic_cached_and_split_independent(tmp_path: Path) -> None:
    a = PointCloudData(train=70, val=40, test=30, num_points=32, seed=0, cache_dir=tmp_path)
    assert set(a.sources.values()) == {"generated"} and all(
        p is not None and p.is_file() for p in a.cache_paths.values()
    )
    b = PointCloudData(train=70, val=40, test=30, num_points=32, seed=0, cache_dir=tmp_path)
    assert set(b.sources.values()) == {"cache"}
    fresh = PointCloudData(train=70, val=40, test=30, num_points=32, seed=0, cache=False)
    for split in ("train", "val", "test"):
        for key in ("points", "labels", "params", "rotations"):
            assert np.array_equal(a.splits[split].arrays[key], b.splits[split].arrays[key])
            assert np.array_equal(a.splits[split].arrays[key], fresh.splits[split].arrays[key])
    # another seed, and each split from its own stream
    other = PointCloudData(train=70, val=40, test=30, num_points=32, seed=1, cache=False)
    assert not np.allclose(other.train.points, a.train.points)
    assert not np.allclose(a.train.points[:30], a.val.points[:30])
    assert not np.allclose(a.val.points[:30], a.test.points)
    # val/test do not depend on the training size, and a smaller split is a prefix of a larger one
    small = PointCloudData(train=5, val=40, test=30, num_points=32, seed=0, cache=False)
    assert torch.equal(small.val.points, a.val.points) and torch.equal(small.test.labels, a.test.labels)
    assert torch.equal(small.train.points, a.train.points[:5])
    assert a.train.points.dtype == torch.float32 and a.train.arrays["points"].dtype == np.float64
    # items and batches: ((points [N, 3],), label)
    (points,), label = a.train[3]
    assert points.shape == (32, 3) and label.dtype == torch.int64 and label.shape == ()
    (batch,), labels = next(iter(DataLoader(a.train, batch_size=16)))
    assert batch.shape == (16, 32, 3) and labels.shape == (16,)
    with pytest.raises(ValueError, match="classes"):
        PointCloudData(train=1, val=1, test=1, classes=["sphere", "blob"], cache=False)


def test_labels_balanced() -> None:
    labels = sample_shapes(200, seed=3, num_points=4)["labels"]
    counts = np.bincount(labels, minlength=C)
    assert counts.sum() == 200 and counts.min() >= 200 // C - 1 and counts.max() - counts.min() <= 8
    subset = PointCloudData(train=64, val=8, test=8, num_points=4, classes=["torus", "cone"], cache=False)
    assert subset.num_classes == 2 and np.bincount(subset.train.arrays["labels"]).tolist() == [32, 32]


def test_points_lie_on_their_surfaces() -> None:
    rotated = sample_shapes(96, seed=11, num_points=200, rotate=True)
    plain = sample_shapes(96, seed=11, num_points=200, rotate=False)
    # rotate=False is exactly the unrotated data; the rotations are proper and orthogonal
    R = rotated["rotations"]
    assert np.allclose(np.einsum("bij,bnj->bni", R, plain["points"]), rotated["points"], atol=1e-12)
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-12) and np.allclose(np.linalg.det(R), 1)
    assert np.array_equal(plain["rotations"], R) and np.array_equal(plain["labels"], rotated["labels"])
    for i in range(96):
        label, params = int(plain["labels"][i]), plain["params"][i]
        assert np.abs(shape_surface_residual(plain["points"][i], label, params)).max() < 1e-12, POINTCLOUD_CLASSES[
            label
        ]
        unrotated = rotated["points"][i] @ R[i]
        assert np.abs(shape_surface_residual(unrotated, label, params)).max() < 1e-12
        # the check has teeth: the same points are far from the surface of another class
        wrong = (label + 1) % C
        j = int(np.nonzero(plain["labels"] == wrong)[0][0])
        assert np.abs(shape_surface_residual(plain["points"][i], wrong, plain["params"][j])).max() > 0.05


def test_sampling_is_uniform_by_area() -> None:
    boxes = sample_shapes(16, seed=2, num_points=20000, rotate=False, classes=["box"])
    for pts, h in zip(boxes["points"], boxes["params"]):
        on_face = np.abs(np.abs(pts) - h) < 1e-12  # [N, 3]: which pair of faces each point is on
        area = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])
        assert np.allclose(on_face.mean(0), area / area.sum(), atol=0.015)
    # torus: the tube angle has density ∝ R + r cos(phi), so the outer half (rho > R) holds (πR + 2r) / (2πR)
    tori = sample_shapes(16, seed=3, num_points=20000, rotate=False, classes=["torus"])
    for pts, (big, small, _) in zip(tori["points"], tori["params"]):
        outer = (np.hypot(pts[:, 0], pts[:, 1]) > big).mean()
        assert abs(outer - (np.pi * big + 2 * small) / (2 * np.pi * big)) < 0.015
    # ellipsoid (the sphere class's sampler) on a strongly prolate case: the band |z| < c/2 holds the fraction of
    # the area given by the spheroid's area element, not the 1/2 a direction-uniform sampler would give
    pts = data_mod._sample_ellipsoid(np.random.default_rng(0), np.array([[1.0, 1.0, 3.0]]), 40000)[0]
    t = np.linspace(-1, 1, 200001)
    element = np.sqrt(9 * (1 - t**2) + t**2)  # dA ∝ sqrt(c² sin²θ + cos²θ) d(cos θ) for a = b = 1, c = 3
    expected = element[np.abs(t) < 0.5].sum() / element.sum()
    assert expected > 0.55 and abs((np.abs(pts[:, 2]) < 1.5).mean() - expected) < 0.01
    noisy = sample_shapes(8, seed=4, num_points=500, rotate=False, noise=0.01)
    clean = sample_shapes(8, seed=4, num_points=500, rotate=False)
    assert 0.005 < np.abs(noisy["points"] - clean["points"]).std() < 0.02


# --- the model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 8])
def test_vnpointnet_is_invariant(clouds: torch.Tensor, k: int | None) -> None:
    torch.manual_seed(0)
    model = calibrated(VNPointNet(C, hidden=16, num_layers=2, k=k), clouds)
    logits = model(clouds)
    assert logits.shape == (C, C) and logits.dtype == torch.float32 and logits.abs().max() > 0.1
    assert max(invariance(model, clouds, seed) for seed in range(3)) < 1e-5
    assert invariance(model.train(), clouds) < 1e-5  # batch statistics of an invariant feature are invariant
    model.eval()
    perm = torch.randperm(clouds.shape[1])
    assert torch.allclose(model(clouds[:, perm]), logits, atol=1e-5)  # permutation-invariant too
    with default_dtype(torch.float64):
        model64 = VNPointNet(C, hidden=16, num_layers=2, k=k)
    assert next(model64.parameters()).dtype == torch.float64
    assert invariance(calibrated(model64, clouds.double()), clouds.double()) < 1e-10


@pytest.mark.parametrize("fuse", [False, True])
def test_relax_finds_every_vnlinear_and_zero_branches_change_nothing(clouds: torch.Tensor, fuse: bool) -> None:
    torch.manual_seed(1)
    model = VNPointNet(C, hidden=8, num_layers=3, k=4)
    expected = model(clouds)
    relaxed = relaxcli.relax(model, init_std=0.0, fuse=fuse)
    assert relaxed.mode == "fx"
    vn_paths = [name for name, m in model.named_modules() if isinstance(m, VNLinear)]
    assert [s.path for s in relaxed.sites] == vn_paths and len(vn_paths) == 2 * 3 + 1
    assert all(s.fused == fuse for s in relaxed.sites)
    assert relaxed.dry_run(clouds) == {p: 1 for p in vn_paths}
    relaxed.set_theta(1.0)
    if fuse:  # one product with kron(W, I3) + θ·0: the same sums in another order
        assert torch.allclose(relaxed(clouds), expected, rtol=0, atol=1e-6)
    else:
        assert torch.equal(relaxed(clouds), expected)
    with relaxed.projected():  # the projected model always runs the user's own op
        assert torch.equal(relaxed(clouds), expected)
    assert list(relaxed.module.state_dict()) == list(VNPointNet(C, hidden=8, num_layers=3, k=4).state_dict())


@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_fused_sites_give_the_same_outputs_and_gradients_as_separate_ones(clouds: torch.Tensor, mode: str) -> None:
    torch.manual_seed(3)
    model = VNPointNet(C, hidden=8, num_layers=2, k=4)
    twin = VNPointNet(C, hidden=8, num_layers=2, k=4)
    twin.load_state_dict(model.state_dict())
    original = model(clouds).detach()
    fused = relaxcli.relax(model, mode=mode, init_std=0.3)
    separate = relaxcli.relax(twin, mode=mode, init_std=0.3, fuse=False)
    separate.branches.load_state_dict(fused.branches.state_dict())
    assert all(s.fused for s in fused.sites) and not any(s.fused for s in separate.sites)
    results = []
    for relaxed in (fused, separate):
        for b in relaxed.branches.values():
            b.learn_theta(0.7)  # a learnable θ (ACE's γ): its gradient is compared too
        out = relaxed(clouds)
        captured = [b.captured[0] for b in relaxed.branches.values()]
        out.square().sum().backward()
        grads = [p.grad for p in (*relaxed.module.parameters(), *relaxed.branch_parameters())]
        results.append((out, captured, grads))
    (out_f, cap_f, grad_f), (out_s, cap_s, grad_s) = results
    assert torch.allclose(out_f, out_s, atol=1e-5) and not torch.allclose(out_f, original, atol=1e-3)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cap_f, cap_s))  # the regulariser's inputs
    assert all((a - b).abs().max() < 1e-5 * b.abs().max() for a, b in zip(grad_f, grad_s))  # float32 rounding
    if mode == "hooks":  # a fused site replaces its op's forward on the instance, and strip() undoes it
        assert all("forward" in s.op.__dict__ for s in fused.sites)
        fused.strip()
        assert not any("forward" in s.op.__dict__ for s in fused.sites)
        assert torch.equal(model(clouds), original)


def test_random_branches_break_invariance(clouds: torch.Tensor) -> None:
    torch.manual_seed(2)
    model = calibrated(VNPointNet(C, hidden=8, num_layers=2), clouds)
    relaxed = relaxcli.relax(model, init_std=0.3)
    relaxed.set_theta(1.0)
    assert invariance(relaxed, clouds) > 1e-2
    with relaxed.projected():
        assert invariance(relaxed, clouds) < 1e-5


# --- the recipes --------------------------------------------------------------------------------------------


def test_recipe_pair_differs_only_in_relax() -> None:
    relaxed = load_recipe(RECIPES / "pointcloud_relaxed.yaml")
    standard = load_recipe(RECIPES / "pointcloud_standard.yaml")
    assert relaxed.relax.enabled and not standard.relax.enabled
    assert (relaxed.name, standard.name) == ("pointcloud-relaxed", "pointcloud-standard")
    a, b = relaxed.to_dict(), standard.to_dict()
    for d in (a, b):
        del d["name"], d["relax"]
    assert a == b
    assert relaxed.model.target == "relaxcli.tasks.VNPointNet" and relaxed.loss.target == "torch.nn.CrossEntropyLoss"
    assert relaxed.symmetry is not None and relaxed.symmetry.inputs == ["cartesian_points"]
    assert relaxed.symmetry.output is None
    assert relaxed.model.kwargs["num_classes"] == len(POINTCLOUD_CLASSES)


def test_one_epoch_train_and_project(tmp_path: Path) -> None:
    env = {**os.environ, "RELAX_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    relax = [sys.executable, "-m", "relaxcli"]
    overrides = [
        "trainer.epochs=1",
        "data.train=32",
        "data.val=16",
        "data.test=16",
        "data.num_points=64",
        "model.hidden=8",
        "trainer.batch_size=16",
        "trainer.eval_batch_size=16",
        "trainer.device=cpu",
    ]
    proc = subprocess.run(
        [*relax, "train", str(RECIPES / "pointcloud_relaxed.yaml"), *overrides, "--run-dir", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["relaxed"] and np.isfinite(summary["test_projected"]) and summary["steps"] == 2
    assert any((tmp_path / "cache").glob("pointcloud-train-*.npz"))
    assert f"test accuracy (projected) {summary['test_projected_accuracy']:.4g}" in proc.stdout
    # the CLI's equivariance check works with an invariant (null) output spec
    best = tmp_path / "run" / "checkpoints" / "best.safetensors"
    proc = subprocess.run(
        [*relax, "project", str(best), "-o", str(tmp_path / "projected.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "projected.safetensors").is_file()
    # trainer.metrics: [accuracy] reports the projected model's top-1 accuracy on the test split
    model = load_model(tmp_path / "projected.safetensors").eval()
    data = PointCloudData(train=32, val=16, test=16, num_points=64, cache_dir=tmp_path / "cache")
    points = torch.stack([data.test[i][0][0] for i in range(16)])
    labels = torch.stack([data.test[i][1] for i in range(16)])
    with torch.no_grad():
        expected = float((model(points).argmax(-1) == labels).double().mean())
    assert summary["test_projected_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_accuracy_rejects_regression_outputs() -> None:
    assert float(accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))) == 2 / 3
    with pytest.raises(RelaxError, match=r"trainer.metrics: accuracy needs logits .*float32 target of shape \(4, 3\)"):
        accuracy(torch.randn(4, 3), torch.randn(4, 3))
