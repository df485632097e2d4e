"""``relax.include`` presets: the sites of a message-passing model selected by their role."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml
from e3nn import o3
from torch import nn

import relaxcli
from relaxcli import RelaxError
from relaxcli.core.graph import _LeafTracer, find_sites
from relaxcli.core.presets import site_roles
from relaxcli.errors import RecipeError
from relaxcli.recipe import load_recipe
from relaxcli.tasks import SEGNN

RECIPES = Path(relaxcli.__file__).parent / "recipes"


def roles(model: nn.Module) -> dict[str, str]:
    return site_roles(model, find_sites(model), _LeafTracer)


def test_segnn_node_update_is_the_two_update_products_of_each_layer() -> None:
    """What the official relaxed-SEGNN code relaxes: update1 and update2 of every layer, nothing else."""
    model = SEGNN("4x0e+4x1o", num_layers=2)  # fx mode leaves the model untouched: one model serves every case
    relaxed = relaxcli.relax(model, include=["@node_update"])
    assert [s.path for s in relaxed.sites] == [f"layers.{i}.{n}" for i in range(2) for n in ("update1.tp", "update2")]
    found = roles(model)
    assert {p for p, r in found.items() if r == "message"} == {
        f"layers.{i}.message{k}.tp" for i in range(2) for k in (1, 2)
    }
    assert found["embed"] == found["readout1.tp"] == found["readout2"] == "node"
    assert len(relaxcli.relax(model, include=["@messages"]).sites) == 4
    nodes = relaxcli.relax(model, include=["@nodes", "layers.0.message1.tp"])
    assert len(nodes.sites) == 11 - 4 + 1  # presets and globs mix


class _Layer(nn.Module):
    def __init__(self, irreps: str) -> None:
        super().__init__()
        self.message = o3.Linear(f"{irreps}+{irreps}", irreps)
        self.update = o3.Linear(f"{irreps}+{irreps}", irreps)

    def forward(self, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        m = self.message(torch.cat([h.index_select(0, src), h[dst]], dim=-1))
        agg = torch.zeros_like(h).scatter_add(0, dst[:, None].expand_as(m), m)
        return self.update(torch.cat([h, agg], dim=-1))


class _MessagePassing(nn.Module):
    """A generic message-passing model: gathers by index_select and indexing, aggregates with scatter_add."""

    def __init__(self, irreps: str = "2x0e+1x1o") -> None:
        super().__init__()
        self.embed = o3.Linear(irreps, irreps)
        self.blocks = nn.ModuleList(_Layer(irreps) for _ in range(2))
        self.head = o3.Linear(irreps, "1x1o")

    def forward(self, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        h = self.embed(h)
        for block in self.blocks:
            h = block(h, src, dst)
        return self.head(h)


def test_roles_of_a_generic_message_passing_model() -> None:
    assert roles(_MessagePassing()) == {
        "embed": "node",
        "blocks.0.message": "message",
        "blocks.0.update": "node_update",
        "blocks.1.message": "message",
        "blocks.1.update": "node_update",
        "head": "node",
    }
    relaxed = relaxcli.relax(_MessagePassing(), include=["@node_update"])
    h, src, dst = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 4, 5, 0])
    assert relaxed.dry_run(h, src, dst) == {"blocks.0.update": 1, "blocks.1.update": 1}


def test_a_model_may_declare_its_presets() -> None:
    class Declared(_MessagePassing):
        relax_presets: ClassVar[dict[str, list[str]]] = {"node_update": ["blocks.1.update"]}

    relaxed = relaxcli.relax(Declared(), include=["@node_update"])
    assert [s.path for s in relaxed.sites] == ["blocks.1.update"]


def test_unknown_preset_and_untraceable_model_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RelaxError, match="unknown preset '@edges'"):
        relaxcli.relax(_MessagePassing(), include=["@edges"])

    class Untraceable(_MessagePassing):
        def forward(self, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
            if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
                h = -h
            return super().forward(h, src, dst)

    with pytest.raises(RelaxError, match=r"torch\.fx cannot trace Untraceable"):
        relaxcli.relax(Untraceable(), include=["@node_update"])
    recipe = yaml.safe_load((RECIPES / "nbody_relaxed.yaml").read_text())
    recipe["relax"]["include"] = ["@node_updates"]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(Exception, match=r"relax\.include\[0\].*did you mean '@node_update'"):
        load_recipe(path)


def test_presets_need_no_quotes_in_an_override_and_a_file_says_how_to_quote_them(tmp_path: Path) -> None:
    path = RECIPES / "nbody_relaxed.yaml"
    assert load_recipe(path, ["relax.include=[@node_update]"]).relax.include == ["@node_update"]
    assert load_recipe(path, ['relax.include=[@messages, "*.update"]']).relax.include == ["@messages", "*.update"]
    text = path.read_text().replace("relax:\n", "relax:\n  include: [@node_update]\n", 1)
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match=r'r\.yaml:\d+: invalid YAML: .*quoted: include: \["@node_update"\]'):
        load_recipe(tmp_path / "r.yaml")
