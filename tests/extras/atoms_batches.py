"""Helpers for the MACE and NequIP tests: hand-built graph batches in the layout of ``relaxcli.atoms.GraphCollate``,
the atomistic symmetry spec, and the shipped recipes made tiny."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

import relaxcli
from relaxcli.core.reps import default_dtype

RECIPES = Path(relaxcli.__file__).parent / "recipes"
INPUTS_SPEC = {"positions": "cartesian_points", "shifts": "1x1o", "cell": "1x1o"}
OUTPUT_SPEC = {"energy": "0e", "forces": "1x1o"}


def structure(n: int, numbers: list[int], cutoff: float, seed: int) -> dict[str, torch.Tensor]:
    """One cluster of ``n`` atoms (a jittered grid, at least ~1.9 Å apart) drawn from ``numbers`` (ascending atomic
    numbers, the one-hot order), in the default dtype: every pair within ``cutoff`` is an edge."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) * 2.5
    positions = grid[torch.randperm(27, generator=g)[:n]] + 0.15 * torch.randn(n, 3, generator=g)
    positions = (positions + 4 * torch.randn(1, 3, generator=g)).to(torch.get_default_dtype())
    species = torch.randint(0, len(numbers), (n,), generator=g)
    close = (torch.cdist(positions, positions) < cutoff) & ~torch.eye(n, dtype=torch.bool)
    edge_index = close.nonzero().T.contiguous()
    edges = edge_index.shape[1]
    return {
        "positions": positions,
        "node_attrs": torch.nn.functional.one_hot(species, len(numbers)).to(positions.dtype),
        "species": species,
        "atomic_numbers": torch.tensor(numbers)[species],
        "edge_index": edge_index,
        "shifts": positions.new_zeros(edges, 3),
        "unit_shifts": positions.new_zeros(edges, 3),
        "cell": positions.new_zeros(3, 3),
        "pbc": torch.zeros(3, dtype=torch.bool),
    }


def graph_batch(sizes: list[int], numbers: list[int], cutoff: float = 4.0) -> dict[str, torch.Tensor]:
    """Structures of ``sizes`` atoms batched as ``GraphCollate`` does: node and edge tensors concatenated,
    ``edge_index`` offset, ``cell`` and ``pbc`` stacked, ``batch`` and ``ptr`` added."""
    items = [structure(n, numbers, cutoff, seed) for seed, n in enumerate(sizes)]
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    batch = {k: torch.cat([it[k] for it in items]) for k in ("positions", "node_attrs", "species", "atomic_numbers")}
    batch["edge_index"] = torch.cat([it["edge_index"] + o for it, o in zip(items, offsets)], dim=1)
    batch.update({k: torch.cat([it[k] for it in items]) for k in ("shifts", "unit_shifts")})
    batch.update({k: torch.stack([it[k] for it in items]) for k in ("cell", "pbc")})
    batch["batch"] = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    batch["ptr"] = torch.tensor(offsets)
    return batch


def tiny_recipe(name: str, tmp_path: Path) -> Path:
    """The shipped recipe ``name`` made tiny: one epoch of two steps on a few structures."""
    data: dict[str, Any] = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    data["data"].update(train=20, val=8, test=8)
    data["trainer"].update(epochs=1, batch_size=10, eval_batch_size=8, log_every=1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_float64(build: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``build()`` in float64 with a float32 checkpoint loaded strictly, keeping its own float64 value of each buffer
    that the checkpoint holds exactly as ``build()`` in float32 makes it: construction-time constants such as MACE's
    symmetric-contraction ``U_matrix_*`` and Bessel frequencies, which would otherwise carry float32 round-off (~5e-12
    relative) into the float64 model."""
    made32 = dict(build().named_buffers())
    with default_dtype(torch.float64):
        model = build()
    made64 = {k: v.clone() for k, v in model.named_buffers()}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point() and name in state and torch.equal(state[name], made32[name]):
                buffer.copy_(made64[name])
    return model


def train_project_inspect(
    name: str, factory: str, sites: list[str], scalar_sites: list[str], tmp_path: Path, relax_cli: Callable[..., Any]
) -> dict[str, torch.Tensor]:
    """The shipped recipe ``name``, made tiny, through ``relax train``, ``project`` and ``inspect`` (real processes):
    the run names the relaxed and the skipped (``0e -> 0e``) sites, the projection passes its check, and inspect
    names the recipe's model ``factory``. Returns the projected file's tensors."""
    trained = relax_cli("train", tiny_recipe(name, tmp_path), "--run-dir", "run", cwd=tmp_path)
    skipped = f"skipped {len(scalar_sites)} sites ({', '.join(scalar_sites)}): maps invariants to invariants"
    said = trained.stdout + trained.stderr
    assert f"relaxed {len(sites)} sites" in said and skipped in said  # 0e -> 0e: no branch, with the reason
    proc = relax_cli("project", "run/checkpoints/best.safetensors", "-o", "projected.safetensors", cwd=tmp_path)
    assert "projected model is equivariant" in proc.stdout + proc.stderr
    inspected = relax_cli("inspect", "projected.safetensors", "--json", cwd=tmp_path)
    assert f'"model": "{factory}"' in inspected.stdout
    return load_file(tmp_path / "projected.safetensors")
