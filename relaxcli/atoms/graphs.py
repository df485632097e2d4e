"""Graph batches: structures of different sizes, each a dict of tensors, made into one batch.

Example:
    >>> collate = GraphCollate()
    >>> inputs, target = collate([train[0], train[1]])
    >>> inputs["edge_index"].max() < inputs["positions"].shape[0]; inputs["ptr"]
    tensor([ 0, 13, 26])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

__all__ = ["GraphCollate", "GRAPH_KEYS", "EDGE_KEYS"]

#: Per-structure keys stacked into ``[B, ...]`` (never concatenated, whatever their shape).
GRAPH_KEYS: tuple[str, ...] = (
    "cell",
    "pbc",
    "energy",
    "free_energy",
    "stress",
    "virials",
    "natoms",
    "charge",
    "total_charge",
    "spin",
    "dipole",
    "weight",
    "energy_weight",
    "forces_weight",
)
#: Per-edge keys concatenated along their first axis (besides ``edge_*`` keys).
EDGE_KEYS: tuple[str, ...] = ("shifts", "unit_shifts")


class GraphCollate:
    """Make one batch of graphs from ``(inputs, target)`` items whose inputs (and target, if a dict) are dicts of
    tensors of one structure each.

    - ``edge_index`` (``[2, E]``) is concatenated along its last axis, each structure's offset by the nodes before;
    - node tensors (first axis = the structure's node count, read from ``nodes_from``) and edge tensors
      (``edge_*``, ``shifts``, ``unit_shifts``, or ``edge_keys``) are concatenated along their first axis;
    - graph tensors (:data:`GRAPH_KEYS`, or ``graph_keys``, and any other tensor) are stacked: ``cell`` becomes
      ``[B, 3, 3]`` and a scalar ``energy`` ``[B]``;
    - ``batch`` (``[N]``, the structure of each node) and ``ptr`` (``[B + 1]``, node offsets) are added to the
      inputs, as torch_geometric and MACE name them.

    Args:
        nodes_from: the key whose first axis is the node count (default: ``positions``, else ``pos``).
        node_keys, edge_keys, graph_keys: keys to treat as such, beside the defaults above; a key named here
            overrides the inference from shapes.
        index_keys: index tensors offset by the node counts (default: ``edge_index``).

    Example (recipe)::

        collate: {_component_: relaxcli.atoms.GraphCollate, graph_keys: [total_charge]}
    """

    def __init__(
        self,
        nodes_from: str | None = None,
        node_keys: Sequence[str] = (),
        edge_keys: Sequence[str] = (),
        graph_keys: Sequence[str] = (),
        index_keys: Sequence[str] = ("edge_index",),
    ) -> None:
        self.nodes_from = nodes_from
        self.node_keys = set(node_keys)
        self.edge_keys = set(EDGE_KEYS) | set(edge_keys)
        self.graph_keys = (set(GRAPH_KEYS) | set(graph_keys)) - self.node_keys - self.edge_keys
        self.index_keys = set(index_keys)

    def __call__(self, items: list[Any]) -> tuple[dict[str, Any], Any]:
        if not items:
            raise ValueError("GraphCollate got no items")
        for i, item in enumerate(items):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], dict)):
                raise ValueError(
                    f"GraphCollate: item {i} is a {type(item).__name__}; each item must be a pair (inputs, target) "
                    "whose inputs are a dict of one structure's tensors (positions, edge_index, ...)"
                )
        inputs = [item[0] for item in items]
        counts = [self._node_count(x, i) for i, x in enumerate(inputs)]
        batch = self._merge(inputs, counts, "inputs")
        batch.setdefault("batch", torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)))
        batch.setdefault("ptr", torch.tensor([0, *counts]).cumsum(0))
        targets = [item[1] for item in items]
        target = self._merge(targets, counts, "target") if isinstance(targets[0], dict) else default_collate(targets)
        return batch, target

    def _node_count(self, x: dict[str, Any], i: int) -> int:
        key = self.nodes_from or next((k for k in ("positions", "pos") if k in x), None)
        if key is None or not torch.is_tensor(x.get(key)) or x[key].dim() == 0:
            raise ValueError(
                f"GraphCollate: item {i} has no {key or 'positions'!r} tensor to count its nodes by (keys: "
                f"{', '.join(map(repr, x))}); name the key whose first axis is the node count with nodes_from"
            )
        return int(x[key].shape[0])

    def _merge(self, dicts: list[dict[str, Any]], counts: list[int], what: str) -> dict[str, Any]:
        keys = list(dicts[0])
        for i, d in enumerate(dicts):
            if list(d) != keys:
                raise ValueError(
                    f"GraphCollate: the {what} of item {i} has keys {sorted(d)}, but item 0 has {sorted(keys)}; "
                    "every structure needs the same keys"
                )
        return {key: self._merge_key(key, [d[key] for d in dicts], counts) for key in keys}

    def _merge_key(self, key: str, values: list[Any], counts: list[int]) -> Any:
        if not all(torch.is_tensor(v) for v in values):
            return values
        if key in self.index_keys:
            offsets = torch.tensor([0, *counts[:-1]]).cumsum(0)
            return torch.cat([v + int(o) for v, o in zip(values, offsets)], dim=-1)
        if key in self.graph_keys:
            return torch.stack(values)
        if key in self.edge_keys or key.startswith("edge_") or key in self.node_keys or _per_node(values, counts):
            return torch.cat(values, dim=0)
        return torch.stack(values)


def _per_node(values: Iterable[torch.Tensor], counts: list[int]) -> bool:
    return all(v.dim() > 0 and v.shape[0] == n for v, n in zip(values, counts))
