"""Tests for relaxcli.data: the charged N-body simulator, its physics, the splits and the on-disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import relaxcli.tasks.nbody as data_mod
from relaxcli.tasks.nbody import NBodyData, baseline_mse, simulate_charged_nbody

SHORT = (2, 4)  # 500 integrator steps: enough for bookkeeping tests, much faster than (30, 40)


def energy(arrays: dict[str, np.ndarray], prefix: str = "") -> np.ndarray:
    """Kinetic + pair potential ``sum_{i<j} q_i q_j / r_ij`` per trajectory (the potential of the published force)."""
    pos, vel, q = arrays[f"{prefix}pos"], arrays[f"{prefix}vel"], arrays["charges"][..., 0]
    iu, ju = np.triu_indices(pos.shape[1], k=1)
    r = np.linalg.norm(pos[:, iu] - pos[:, ju], axis=-1)
    return 0.5 * (vel**2).sum(axis=(1, 2)) + (q[:, iu] * q[:, ju] / r).sum(axis=1)


def energy_drift(arrays: dict[str, np.ndarray]) -> float:
    """Median over unclipped trajectories of |E(output frame) - E(input frame)|."""
    drift = np.abs(energy(arrays, "target_") - energy(arrays))
    return float(np.median(drift[~arrays["clipped"]]))


@pytest.fixture(scope="module")
def free() -> dict[str, np.ndarray]:
    """300 field-free systems on the real task (frames 30 -> 40)."""
    return simulate_charged_nbody(300, seed=123)


@pytest.fixture(scope="module")
def in_field() -> dict[str, np.ndarray]:
    return simulate_charged_nbody(100, seed=7, field=0.5)


# --- the simulator ------------------------------------------------------------------------------------


def test_shapes_dtypes_and_charges(free: dict[str, np.ndarray]) -> None:
    for key in ("pos", "vel", "target_pos", "target_vel"):
        assert free[key].shape == (300, 5, 3) and free[key].dtype == np.float64
    assert free["charges"].shape == (300, 5, 1)
    assert set(np.unique(free["charges"])) == {-1.0, 1.0}
    assert 0.4 < (free["charges"] > 0).mean() < 0.6
    assert free["clipped"].shape == (300,) and free["clipped"].dtype == bool
    small = simulate_charged_nbody(4, seed=0, num_particles=3, frames=SHORT, dtype=np.float32)
    assert small["pos"].shape == (4, 3, 3) and small["pos"].dtype == np.float32


def test_deterministic_from_seed() -> None:
    a = simulate_charged_nbody(8, seed=1, frames=SHORT)
    b = simulate_charged_nbody(8, seed=1, frames=SHORT)
    c = simulate_charged_nbody(8, seed=2, frames=SHORT)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["pos"], c["pos"])
    # trajectory-major initial conditions: the first k systems do not depend on how many are drawn
    longer = simulate_charged_nbody(12, seed=1, frames=SHORT)
    for key in a:
        np.testing.assert_array_equal(longer[key][:8], a[key])


def test_like_charges_repel() -> None:
    """Two like charges at distance 1 along x: unit force pushing them apart; unlike charges attract."""
    x = np.zeros((2, 3, 2))  # [N, 3, T]: trajectory 0 like charges, trajectory 1 unlike
    x[1, 0, :] = 1.0
    q = np.array([[1.0, 1.0], [1.0, -1.0]])
    pairs = np.triu_indices(2, k=1)
    force, clipped = data_mod._pair_forces(x, q, q[pairs[0]] * q[pairs[1]], pairs, 0.0)
    np.testing.assert_allclose(force[:, :, 0], [[-1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(force[:, :, 1], [[1, 0, 0], [-1, 0, 0]])
    assert not clipped.any()
    x[1, 0, :] = 0.05  # |F| = 400 > 100: clipped
    force, clipped = data_mod._pair_forces(x, q, q[pairs[0]] * q[pairs[1]], pairs, 0.0)
    assert clipped.all() and np.abs(force).max() == 100.0


def test_momentum_and_centre_of_mass(free: dict[str, np.ndarray]) -> None:
    """Without clipping, pair forces cancel: total momentum is conserved and the centre of mass moves by P t.

    t = 1000 steps * 0.001 = 1.0 between frames 30 and 40, so a wrong frame gap fails the second check.
    """
    ok = ~free["clipped"]
    assert ok.sum() > 100  # close encounters clip the force in roughly half of the systems
    p_in, p_out = free["vel"].sum(axis=1), free["target_vel"].sum(axis=1)
    np.testing.assert_allclose(p_out[ok], p_in[ok], rtol=0, atol=1e-10)
    com_shift = (free["target_pos"] - free["pos"]).mean(axis=1)
    np.testing.assert_allclose(com_shift[ok], p_in[ok] / 5 * 1.0, rtol=0, atol=1e-10)
    # the velocities really change (forces act), so the checks above are not vacuous
    assert np.abs(free["target_vel"] - free["vel"]).mean() > 0.05


def test_energy_conserved_and_sign_matters(free: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """The energy of the published potential is conserved up to the integrator error; flipping the force
    sign (like charges attracting) breaks it by orders of magnitude."""
    assert energy_drift(free) < 2e-3
    monkeypatch.setattr(data_mod, "INTERACTION_STRENGTH", -1.0)
    assert energy_drift(simulate_charged_nbody(100, seed=123)) > 0.1


def test_field_changes_z_momentum_analytically(in_field: dict[str, np.ndarray]) -> None:
    """F_i += q_i E along z: between the frames (t = 1.0) dP_z = E * sum_i q_i * t, dP_x = dP_y = 0."""
    ok = ~in_field["clipped"]
    assert ok.sum() > 30
    dp = (in_field["target_vel"] - in_field["vel"]).sum(axis=1)[ok]
    total_charge = in_field["charges"][ok, :, 0].sum(axis=1)
    assert np.abs(total_charge).max() > 0  # some systems carry a net charge, so the check has teeth
    np.testing.assert_allclose(dp[:, 2], 0.5 * total_charge * 1.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dp[:, :2], 0.0, rtol=0, atol=1e-10)


def test_reference_anchors(free: dict[str, np.ndarray]) -> None:
    """No-motion MSE ~ 0.27 and constant-velocity MSE ~ 0.11 on nbody_small (checks frames and units)."""
    anchors = baseline_mse(free)
    assert abs(anchors["no_motion"] - 0.27) < 0.05, anchors
    assert abs(anchors["constant_velocity"] - 0.11) < 0.04, anchors


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        simulate_charged_nbody(2, seed=0, frames=(5, 5))
    with pytest.raises(ValueError):
        simulate_charged_nbody(2, seed=0, num_particles=1)
    assert simulate_charged_nbody(0, seed=0, frames=SHORT)["pos"].shape == (0, 5, 3)


# --- datasets and cache -------------------------------------------------------------------------------


def test_dataset_items_and_collate(tmp_path) -> None:
    data = NBodyData(train=6, val=4, test=4, frames=SHORT, cache_dir=tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 4, 4)
    (pos, vel, q), target = data.train[0]
    for t, shape in ((pos, (5, 3)), (vel, (5, 3)), (q, (5, 1)), (target, (5, 3))):
        assert t.shape == shape and t.dtype == torch.float32
    (pos, vel, q), target = next(iter(DataLoader(data.train, batch_size=3)))
    assert pos.shape == (3, 5, 3) and vel.shape == (3, 5, 3) and q.shape == (3, 5, 1) and target.shape == (3, 5, 3)
    assert set(data.baselines("val")) == {"no_motion", "constant_velocity"}


def test_val_test_independent_of_train_size() -> None:
    small = NBodyData(train=5, val=4, test=4, seed=3, frames=SHORT, cache=False)
    large = NBodyData(train=9, val=4, test=4, seed=3, frames=SHORT, cache=False)
    for split in ("val", "test"):
        torch.testing.assert_close(small.splits[split].pos, large.splits[split].pos, rtol=0, atol=0)
        torch.testing.assert_close(small.splits[split].target, large.splits[split].target, rtol=0, atol=0)
    torch.testing.assert_close(large.train.pos[:5], small.train.pos, rtol=0, atol=0)  # a prefix, too
    assert not torch.equal(small.val.pos, small.test.pos)  # the splits are different streams
    other_seed = NBodyData(train=5, val=4, test=4, seed=4, frames=SHORT, cache=False)
    assert not torch.equal(other_seed.val.pos, small.val.pos)


def test_cache_hit_does_not_resimulate(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = NBodyData(train=5, val=3, test=3, seed=1, frames=SHORT, cache_dir=tmp_path)
    assert set(first.sources.values()) == {"simulated"}
    paths = {split: first.cache_paths[split] for split in ("train", "val", "test")}
    assert all(p is not None and p.is_file() and p.parent == tmp_path for p in paths.values())
    assert len({p.name for p in paths.values()}) == 3
    mtimes = {split: p.stat().st_mtime_ns for split, p in paths.items()}
    with np.load(paths["val"], allow_pickle=False) as npz:  # plain arrays, no pickles
        assert "meta" in npz.files and npz["pos"].shape == (3, 5, 3)

    def boom(*args, **kwargs):
        raise AssertionError("cache miss: simulate_charged_nbody was called")

    monkeypatch.setattr(data_mod, "simulate_charged_nbody", boom)
    second = NBodyData(train=5, val=3, test=3, seed=1, frames=SHORT, cache_dir=tmp_path)
    assert set(second.sources.values()) == {"cache"}
    for split in ("train", "val", "test"):
        for key in data_mod.ARRAY_KEYS:
            np.testing.assert_array_equal(first.splits[split].arrays[key], second.splits[split].arrays[key])
        assert paths[split].stat().st_mtime_ns == mtimes[split]
    monkeypatch.undo()

    # another training size reuses the val/test files; another field misses every file
    third = NBodyData(train=7, val=3, test=3, seed=1, frames=SHORT, cache_dir=tmp_path)
    assert third.sources == {"train": "simulated", "val": "cache", "test": "cache"}
    fourth = NBodyData(train=5, val=3, test=3, seed=1, field=0.1, frames=SHORT, cache_dir=tmp_path)
    assert set(fourth.sources.values()) == {"simulated"}
    assert fourth.cache_paths["val"] != paths["val"]
    assert not [f for f in os.listdir(tmp_path) if not f.endswith(".npz")]  # no temp files left behind


def test_corrupt_cache_is_regenerated(tmp_path) -> None:
    first = NBodyData(train=3, val=3, test=3, frames=SHORT, cache_dir=tmp_path)
    first.cache_paths["test"].write_bytes(b"not an npz")
    again = NBodyData(train=3, val=3, test=3, frames=SHORT, cache_dir=tmp_path)
    assert again.sources["test"] == "simulated"
    torch.testing.assert_close(again.test.target, first.test.target, rtol=0, atol=0)


def test_default_cache_dir_from_env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAX_CACHE", str(tmp_path / "c"))
    data = NBodyData(train=2, val=2, test=2, frames=SHORT)
    assert data.cache_paths["train"].parent == tmp_path / "c"
    assert data.cache_paths["train"].is_file()


def test_allen_cahn_fields_are_deterministic_and_d4_symmetric() -> None:
    from relaxcli.tasks.grid import AllenCahnData, simulate_allen_cahn

    a = AllenCahnData(train=8, val=4, test=4, size=16, seed=3)
    b = AllenCahnData(train=12, val=4, test=4, size=16, seed=3)
    assert torch.equal(a.train.inputs, b.train.inputs[:8]) and torch.equal(a.val.targets, b.val.targets)
    assert not torch.equal(a.val.inputs, a.test.inputs)
    u0 = a.train.inputs[:, 0].double().numpy()
    u_t = simulate_allen_cahn(u0)
    for move in (lambda u: np.rot90(u, 1, axes=(-2, -1)), lambda u: np.flip(u, -1)):
        assert np.abs(simulate_allen_cahn(move(u0)) - move(u_t)).max() < 1e-12
    assert np.abs(u_t - a.train.targets[:, 0].double().numpy()).max() < 1e-6
    with pytest.raises(ValueError, match="unstable"):
        AllenCahnData(train=2, val=2, test=2, dt=0.5)
