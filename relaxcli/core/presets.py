"""Site-selection presets for ``relax.include``: which ops of a message-passing model to relax, by their role.

A preset is an ``include`` entry starting with ``@``; it stands for the paths of the sites it selects:

- ``@node_update``: the ops that update node features from aggregated messages, inside the layer that aggregated
  them (SEGNN's two update tensor products per layer: what the official relaxed-SEGNN code relaxes);
- ``@messages``: the ops on edge features (a feature gathered from nodes, ``h[src]``, before it is aggregated);
- ``@nodes``: every op on node features (updates, embedding, readout).

A model may declare its own presets as a class attribute ``relax_presets = {"node_update": [globs...]}``, which
then take precedence (the built-in :class:`~relaxcli.tasks.SEGNN` does). Otherwise the roles are read off the
model's ``torch.fx`` graph: a value is per-edge after a gather (indexing with a tensor, ``index_select``,
``gather``) and per-node again after an aggregation (``index_add``, ``scatter*``, ``index_reduce``); a node-level
site is a node update when an aggregation ran inside a module that encloses it.

Example:
    >>> relaxed = relax(SEGNN(), include=["@node_update"])
    >>> [s.path for s in relaxed.sites][:2]
    ['layers.0.update1.tp', 'layers.0.update2']
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from torch import fx, nn

from ..errors import RelaxError
from ..ops.base import OpAdapter

__all__ = ["PRESETS", "expand_presets", "site_roles"]

#: Preset name (as written in ``relax.include``) -> the roles it selects, and a description.
PRESETS: dict[str, tuple[frozenset[str], str]] = {
    "@node_update": (
        frozenset({"node_update"}),
        "ops updating node features from aggregated messages (the official SEGNN practice)",
    ),
    "@messages": (frozenset({"message"}), "ops on edge (message) features"),
    "@nodes": (frozenset({"node_update", "node"}), "every op on node features (updates, embedding, readout)"),
}

_GATHERS = {"index_select", "gather", "take_along_dim"}
_AGGREGATIONS = {
    "index_add",
    "index_add_",
    "index_reduce",
    "index_reduce_",
    "scatter",
    "scatter_",
    "scatter_add",
    "scatter_add_",
    "scatter_reduce",
    "scatter_reduce_",
    "scatter_sum",
    "scatter_mean",
    "scatter_max",
    "scatter_min",
    "segment_reduce",
    "segment_coo",
    "segment_csr",
}


def expand_presets(model: nn.Module, include: Sequence[str], roles: Callable[[], dict[str, str]]) -> list[str]:
    """``include`` with each preset (``@name``) replaced by the paths of the sites it selects; ``roles()`` gives
    each site's role (:func:`site_roles`), and is called only when a preset needs it."""
    if not any(g.startswith("@") for g in include):
        return list(include)
    unknown = [g for g in include if g.startswith("@") and g not in PRESETS]
    if unknown:
        raise RelaxError(
            f"relax.include: unknown preset {unknown[0]!r}; the presets are "
            f"{', '.join(PRESETS)} (a glob on module paths needs no '@')"
        )
    declared = getattr(type(model), "relax_presets", None) or {}
    found: dict[str, str] | None = None
    out: list[str] = []
    for g in include:
        if not g.startswith("@"):
            out.append(g)
        elif g[1:] in declared:
            out += list(declared[g[1:]])
        else:
            if found is None:
                found = roles()
            out += [path for path, role in found.items() if role in PRESETS[g][0]]
    return out


def site_roles(
    model: nn.Module, found: list[tuple[str, nn.Module, OpAdapter]], tracer: Callable[[set[str]], fx.Tracer]
) -> dict[str, str]:
    """Each site's role in a message-passing model: ``"message"`` (edge features), ``"node_update"`` (node
    features after an aggregation in an enclosing module) or ``"node"`` (other node features), from the fx graph.

    Args:
        model: the user's model.
        found: its sites, ``(path, module, adapter)`` (:func:`relaxcli.core.graph.find_sites`).
        tracer: makes the fx tracer that keeps the given site paths as leaves (the graph pass's own).
    """
    paths = {p for p, _, _ in found}
    by_path = {p: a for p, _, a in found}
    try:
        graph = tracer(paths).trace(model)
    except Exception as e:  # fx raises many kinds of errors for untraceable code
        raise RelaxError(
            f"relax.include presets read the roles of the ops off the model's torch.fx graph, and torch.fx cannot "
            f"trace {type(model).__name__} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); list the "
            "sites with globs on their module paths instead (relax inspect shows them), or declare "
            "relax_presets on the model class"
        ) from None
    edge: dict[fx.Node, bool] = {}
    aggregated: dict[fx.Node, frozenset[str]] = {}
    at_site: dict[str, tuple[bool, frozenset[str]]] = {}  # path -> (edge feature, aggregation scopes)
    for node in graph.nodes:
        inputs = node.all_input_nodes
        is_edge = any(edge.get(n, False) for n in inputs)
        scopes = frozenset().union(*(aggregated.get(n, frozenset()) for n in inputs))
        name = _name(node)
        if name in _AGGREGATIONS:
            is_edge = False  # messages summed onto nodes
            scopes = scopes | {_scope(node)}
        elif name in _GATHERS or _indexes_with_tensor(node):
            is_edge = True
        if node.op == "call_module" and node.target in paths:
            feature = by_path[node.target].feature(tuple(node.args), dict(node.kwargs))
            site_edge = edge.get(feature, False) if isinstance(feature, fx.Node) else is_edge
            site_scopes = aggregated.get(feature, scopes) if isinstance(feature, fx.Node) else scopes
            at_site[node.target] = (site_edge, site_scopes)
        edge[node], aggregated[node] = is_edge, scopes
    # the model's own forward counts as the aggregating layer only where no submodule aggregates (SEGNN averages
    # edge attributes onto nodes at the top, then aggregates messages in its layers)
    layered = any(s for v in aggregated.values() for s in v)
    out: dict[str, str] = {}
    for path, _, _ in found:
        site_edge, site_scopes = at_site.get(path, (False, frozenset()))
        if site_edge:
            out[path] = "message"
        elif any(path.startswith(s + ".") if s else not layered for s in site_scopes):
            out[path] = "node_update"
        else:
            out[path] = "node"
    return out


def _name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", ""))
    return ""


def _scope(node: fx.Node) -> str:
    """The path of the innermost module whose forward ran ``node`` ("" for the model's own forward)."""
    stack: Any = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    value = list(stack.values())[-1]
    return str(value[0] if isinstance(value, tuple) else list(stack)[-1])


def _indexes_with_tensor(node: fx.Node) -> bool:
    """``x[index]`` with a tensor index (a gather), not ``x[0]`` or ``x[:, None]``."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) < 2:
        return False
    index = node.args[1]
    parts = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(p, fx.Node) for p in parts)
