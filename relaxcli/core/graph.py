"""The graph pass: find the equivariant linear ops of a user's model and put a branch beside each one.

:func:`relax` traces the model with ``torch.fx`` (registered ops and ``e3nn`` modules are leaves) and replaces each
call of a known op by a :class:`Site` that computes ``op(x) + θ · B(x)``. Where the model cannot be traced
(data-dependent control flow, non-tensor wrappers such as escnn's ``GeometricTensor``) the same sites are attached
with forward hooks instead, and ``RelaxedModel.mode`` says which was used. Where the adapter knows the op's own
matrix in the branch's layout (VN linears, escnn convolutions), a site computes ``op(x) + θ · B(x)`` as one product
with ``op + θ B`` (``Site.fused``); with the branches off it always runs the user's op. Where the graph shows a
site's feature built as ``cat([h[dst], h[src], e], -1)`` (a message), its branch runs on the node rows before the
gather (``Site.on_nodes``, :meth:`DenseBranch.gathered`): the same map on fewer rows.

The relaxed model *shares* the user's module and its parameters: training it trains the user's model, and
``relaxed.module.state_dict()`` has exactly the user's keys. The branches live in ``relaxed.branches``.

Example:
    >>> relaxed = relax(model)                    # fx if it traces, hooks otherwise
    >>> out = relaxed(x)                           # op(x) + θ·B(x) at every site
    >>> with relaxed.projected(): out0 = relaxed(x)  # exactly the user's model
    >>> user_model = relaxed.strip()               # the original module, branches gone
"""

from __future__ import annotations

import contextlib
import fnmatch
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import fx, nn

from ..errors import RelaxError
from ..ops.base import OpAdapter
from ..ops.registry import find_adapter
from .branches import Branch, DenseBranch, LayoutError, Parts
from .calls import inference
from .presets import expand_presets, site_roles

__all__ = ["Site", "RelaxedModel", "relax", "find_sites"]

Mode = Literal["auto", "fx", "hooks"]


@dataclass(eq=False)
class Site:
    """One relaxed op: where it is, how it is called, and its branch.

    Attributes:
        path: the op's qualified module name in the user's model (``"layers.0.linear"``).
        op: the user's op module itself.
        adapter: the :class:`OpAdapter` that recognised it.
        branch: the :class:`Branch` added beside it.
        fused: whether the op and its branch run as one product (``adapter.fused``) while the branch is active.
        on_nodes: whether the fx graph hands the site the pieces its feature is concatenated from, gathered node
            rows among them, so that the branch runs on the nodes (:meth:`DenseBranch.gathered`).
        calls: how often the site fired since the counter was last reset (see :meth:`RelaxedModel.dry_run`).
    """

    path: str
    op: nn.Module
    adapter: OpAdapter
    branch: Branch
    fused: bool = False
    on_nodes: bool = False
    calls: int = 0

    def __call__(
        self, output: Any, args: tuple[Any, ...], kwargs: dict[str, Any], parts: Parts | None = None, dim: int = -1
    ) -> Any:
        """Given the op's output for ``args``/``kwargs``, return it with the branch added; ``parts`` are the pieces
        the feature was concatenated from along ``dim`` (``(source, index)``, see :meth:`DenseBranch.gathered`),
        where the graph shows them."""
        self.calls += 1
        branch = self.branch
        if not branch.active:
            return output
        x = self._capture(args, kwargs)
        try:
            y = branch(x) if parts is None or not isinstance(branch, DenseBranch) else branch.gathered(x, parts, dim)
            return self.adapter.add(output, y)
        except RuntimeError as e:  # a shape torch refuses: say which site, what layout, what shape
            raise self.error(x, e) from e

    def call(
        self,
        run_op: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parts: Parts | None = None,
        dim: int = -1,
    ) -> Any:
        """The op (``run_op``) on ``args``/``kwargs`` with the branch added: fused into one product where the
        adapter can, on the node rows where ``parts`` are given; with the branch off (the projected model) exactly
        ``run_op``."""
        if self.fused and self.branch.active:
            self.calls += 1
            x = self._capture(args, kwargs)
            try:
                return self.adapter.fused(self.op, self.branch, args, kwargs)
            except RuntimeError as e:
                raise self.error(x, e) from e
        return self(run_op(*args, **kwargs), args, kwargs, parts, dim)

    def error(self, x: torch.Tensor, cause: Exception) -> RelaxError:
        """``cause`` (raised attaching, running or regularising the branch on feature ``x``) as one paragraph
        naming the site, its op, the layout the branch assumed and the shape it got."""
        branch = self.branch
        assumed = getattr(branch, "assumed", None)
        layout = assumed() if callable(assumed) else f"{branch.dim_in}-dim feature on the last axis"
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        if isinstance(cause, LayoutError):  # it already says the layout and the shape
            return RelaxError(f"site {self.path} ({self.adapter.name}): {detail}")
        return RelaxError(
            f"site {self.path} ({self.adapter.name}): the branch failed on a feature of shape {tuple(x.shape)} "
            f"(assumed layout: {layout}): {detail}"
        )

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """The branch's input, checked against the branch's layout; kept (detached) for the data regularisers
        while training or inspecting."""
        x = self.adapter.feature(args, kwargs)
        branch = self.branch
        try:
            branch.check_feature(x)
        except LayoutError as e:
            raise self.error(x, e) from None
        if (branch.training and torch.is_grad_enabled()) or branch.force_capture:
            branch.captured.append(x.detach())
        return x


class _SiteCall(nn.Module):
    """What the fx graph calls in place of an op: the op, then its site."""

    def __init__(self, site: Site) -> None:
        super().__init__()
        self.op = site.op
        self.site = site

    def forward(self, *args: Any, _relax_parts: Parts | None = None, _relax_dim: int = -1, **kwargs: Any) -> Any:
        return self.site.call(self.op, args, kwargs, _relax_parts, _relax_dim)


def _has_hooks(m: nn.Module) -> bool:
    """Whether ``m`` carries hooks of its own that run only when it is called (forward, pre-forward, backward)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


class _LeafTracer(fx.Tracer):
    """Keeps the sites, every ``e3nn`` module that holds no site, torch's own modules, and every module that carries
    hooks as leaves.

    A module traced through is inlined: its own forward hooks and pre-hooks (a user's feature logger, say) would
    never run. So a module with hooks at trace time stays whole in the graph and its hooks fire as before; sites
    inside it are attached with forward hooks instead (``RelaxedModel.kept_whole`` lists such modules). Hooks
    registered after :func:`relax` on a module that was traced through are not run by the relaxed model.
    """

    def __init__(self, site_paths: set[str]) -> None:
        super().__init__()
        self.site_paths = site_paths
        self.kept_whole: list[str] = []  # modules kept as leaves because they carry hooks

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.site_paths:
            return True
        holds_site = any(p.startswith(qualname + ".") for p in self.site_paths) if qualname else True
        if type(m).__module__.startswith("e3nn") and not holds_site:
            return True
        if super().is_leaf_module(m, qualname):
            return True
        if qualname and _has_hooks(m):  # traced through, its hooks would not run
            if qualname not in self.kept_whole:
                self.kept_whole.append(qualname)
            return True
        return False


def _branch_key(path: str) -> str:
    """The site's key in ``RelaxedModel.branches``: ``"layers/0/linear"`` for ``"layers.0.linear"``. A path that
    names an attribute of ``nn.ModuleDict`` (a top-level op called ``update`` or ``keys``) gets a trailing ``/``,
    which no module path has."""
    key = path.replace(".", "/")
    return key + "/" if hasattr(nn.ModuleDict, key) else key


class RelaxedModel(nn.Module):
    """A user's model with a branch beside each site. Build it with :func:`relax`.

    Attributes:
        module: the user's model (shared, not copied).
        branches: ``ModuleDict`` of branches keyed by site path with ``/`` for ``.``.
        sites: the :class:`Site` list, in module order.
        mode: ``"fx"`` or ``"hooks"``; ``fallback_reason`` says why fx was not used. In hooks mode a fused site
            replaces its op's ``forward`` on the instance (until :meth:`strip`) instead of adding a forward hook.
        kept_whole: in fx mode, the modules that carry hooks of the user's and so stay whole in the graph (their
            hooks keep firing); sites inside them are attached as in hooks mode (``hooked_sites``).
        skipped: ``(path, reason)`` of the ops found but left without a branch (see :func:`relax`'s
            ``scalar_sites``).
    """

    _gm: fx.GraphModule | None  # set through __dict__: not a registered child

    def __init__(
        self,
        module: nn.Module,
        sites: list[Site],
        mode: Literal["fx", "hooks"],
        graph: fx.Graph | None = None,
        fallback_reason: str | None = None,
        kept_whole: Sequence[str] = (),
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__()
        self.module = module
        self.skipped = list(skipped)
        self.branches = nn.ModuleDict({_branch_key(s.path): s.branch for s in sites})
        self.sites = sites
        self.mode = mode
        self.fallback_reason = fallback_reason
        self.kept_whole = list(kept_whole)
        self._graph = graph
        self._undo: list[Callable[[], Any]] = []  # detach the hooks / forward overrides of hooks mode
        self._stripped = False
        in_graph = {n.meta.get("relax_site") for n in graph.nodes} if graph is not None else set()
        self.hooked_sites = [s.path for s in sites if mode == "fx" and s.path not in in_graph]
        for site in sites:
            if mode == "hooks" or site.path in self.hooked_sites:  # fx: a site inside a module kept whole
                self._undo.append(_attach(site))
        self._build()

    # -- the forward pass ----------------------------------------------------------------------------------------
    def _build(self) -> None:
        """(Re)build the GraphModule; it is not a registered child, so the state_dict holds no duplicate keys."""
        if self.mode != "fx":
            self.__dict__["_gm"] = None
            return
        assert self._graph is not None
        by_path = {s.path: s for s in self.sites}
        root: dict[str, Any] = {}
        for node in self._graph.nodes:
            if node.op == "call_module" and node.target.startswith("relax_sites."):
                root[node.target] = _SiteCall(by_path[node.meta["relax_site"]])
            elif node.op in ("call_module", "get_attr"):
                root[node.target] = operator.attrgetter(node.target)(self.module)
        self.__dict__["_gm"] = fx.GraphModule(root, self._graph, class_name=f"Relaxed{type(self.module).__name__}")

    def _apply(self, fn: Any, recurse: bool = True) -> RelaxedModel:
        # .to()/.double() may replace buffers of the user's model: rebuild the graph module over the new ones.
        super()._apply(fn, recurse)
        self._build()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._stripped:
            raise RuntimeError("this RelaxedModel was stripped; use the module strip() returned")
        for b in self._each_branch():
            b.captured.clear()
        if self._gm is not None:
            return self._gm(*args, **kwargs)
        return self.module(*args, **kwargs)

    def _each_branch(self) -> list[Branch]:
        return [s.branch for s in self.sites]

    # -- controls ------------------------------------------------------------------------------------------------
    def set_theta(self, theta: float) -> None:
        """Set θ of every branch."""
        with torch.no_grad():
            for b in self._each_branch():
                b.theta.fill_(theta)

    @contextlib.contextmanager
    def projected(self) -> Iterator[RelaxedModel]:
        """Within the block the branches are off: the forward pass is exactly the user's model (θ = 0)."""
        previous = [b.active for b in self._each_branch()]
        for b in self._each_branch():
            b.active = False
        try:
            yield self
        finally:
            for b, was in zip(self._each_branch(), previous):
                b.active = was

    @contextlib.contextmanager
    def capturing(self) -> Iterator[RelaxedModel]:
        """Within the block the sites capture their inputs even in eval mode or under ``no_grad`` (for inspection)."""
        for b in self._each_branch():
            b.force_capture = True
        try:
            yield self
        finally:
            for b in self._each_branch():
                b.force_capture = False

    def dry_run(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """Run one forward pass without gradients (with them for a model whose ``forward`` takes gradients, such as
        forces by autograd) and return how often each site fired (path -> count)."""

        def count() -> Any:  # counted afresh on each try (inference retries with gradients)
            for s in self.sites:
                s.calls = 0
            return self(*args, **kwargs)

        inference(count)
        return {s.path: s.calls for s in self.sites}

    def strip(self) -> nn.Module:
        """Remove the branches and return the user's module (same object, same parameters, same keys)."""
        for undo in self._undo:
            undo()
        self._undo.clear()
        self._stripped = True
        return self.module

    def branch_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the branches only."""
        return self.branches.parameters()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, sites={len(self.sites)}"


def _attach(site: Site) -> Callable[[], Any]:
    """Hooks mode: a forward hook adding the branch, or for a fused site an instance-level ``forward`` that runs
    :meth:`Site.call`. Returns the function that detaches it again."""
    op = site.op
    if site.fused:
        run_op = op.forward  # the op's own (bound) forward, for the projected model

        def forward(*args: Any, **kwargs: Any) -> Any:
            return site.call(run_op, args, kwargs)

        op.forward = forward
        return lambda: op.__dict__.pop("forward", None)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        return site(output, args, kwargs)

    return op.register_forward_hook(hook, with_kwargs=True).remove


#: Why an op that maps invariants to invariants gets no branch (see :func:`relax`'s ``scalar_sites``).
INVARIANT_SITE = "maps invariants to invariants (e.g. 0e -> 0e): a branch cannot break equivariance there"


def _invariant(branch: Branch) -> bool:
    """Whether the group acts trivially on both sides of a branch: every generator 0, every element the
    identity."""
    for side in ("in", "out"):
        gens, elems = getattr(branch, f"generators_{side}"), getattr(branch, f"elements_{side}")
        eye = torch.eye(elems.shape[-1], dtype=elems.dtype, device=elems.device)
        if bool(gens.abs().gt(0).any()) or not bool(torch.equal(elems, eye.expand_as(elems))):
            return False
    return True


def find_sites(
    model: nn.Module,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    adapters: list[OpAdapter] | None = None,
) -> list[tuple[str, nn.Module, OpAdapter]]:
    """``(path, module, adapter)`` of each op of ``model`` that :func:`relax` would relax."""
    found: list[tuple[str, nn.Module, OpAdapter]] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(p + ".") for p, _, _ in found):
            continue  # the root itself, or inside an op already relaxed
        adapter = find_adapter(module, adapters)
        if adapter is None:
            continue
        if not any(fnmatch.fnmatchcase(path, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(path, g) for g in exclude):
            continue
        found.append((path, module, adapter))
    return found


def _trace(model: nn.Module, sites: list[Site], on_nodes: bool) -> tuple[fx.Graph, list[str]]:
    """The model's graph with each site's call marked (and handed the pieces of a gathered feature where
    ``on_nodes``), and the modules kept whole because they carry hooks."""
    by_path = {s.path: s for s in sites}
    tracer = _LeafTracer(set(by_path))
    graph = tracer.trace(model)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target in by_path:
            site = by_path[node.target]
            node.meta["relax_site"] = node.target
            node.target = "relax_sites." + _branch_key(node.target).replace("/", "__")
            pieces = _gathered_pieces(site, node) if on_nodes else None
            if pieces is not None and isinstance(site.branch, DenseBranch) and not site.fused:
                node.kwargs = {**node.kwargs, "_relax_parts": pieces[0], "_relax_dim": pieces[1]}
                site.on_nodes = True
    graph.lint()
    return graph, tracer.kept_whole


#: ``torch.cat`` and its aliases, as the graph records them.
_CATS = (torch.cat, torch.concat, torch.concatenate)


def _gathered_pieces(site: Site, node: fx.Node) -> tuple[tuple[tuple[fx.Node, fx.Node | None], ...], int] | None:
    """``(((h, dst), (h, src), (e, None)), dim)`` where the site's feature at its call ``node`` is
    ``torch.cat([h[dst], h[src], e], dim)`` with at least one piece gathered by an index along the first axis
    (``h[idx]``, ``index_select(h, 0, idx)``); None for any other feature. That ``dim`` is the feature's last axis
    and ``idx`` an integer tensor is checked when it runs (:meth:`DenseBranch.gathered`)."""
    try:  # the adapter picks the feature among the call's arguments, here fx nodes
        feature = site.adapter.feature(tuple(node.args), dict(node.kwargs))
    except Exception:  # an adapter that must look inside its argument (a wrapper type): no rewrite
        return None
    if not (isinstance(feature, fx.Node) and feature.op == "call_function" and feature.target in _CATS):
        return None
    pieces = feature.args[0] if feature.args else feature.kwargs.get("tensors")
    dim = feature.args[1] if len(feature.args) > 1 else feature.kwargs.get("dim", 0)
    if not isinstance(dim, int) or not isinstance(pieces, (list, tuple)):
        return None
    if not all(isinstance(p, fx.Node) for p in pieces):
        return None
    parts = tuple(_gather(p) for p in pieces)
    if _written(feature) or any(_written(n) for source, index in parts for n in (source, index) if index is not None):
        return None  # changed in place, the pieces might not rebuild the feature: keep the branch on the edges
    return (parts, dim) if any(index is not None for _, index in parts) else None


def _written(node: fx.Node) -> bool:
    """Whether the graph changes ``node``'s value in place anywhere (``h.add_(...)``, ``h[i] = ...``, ``out=h``)."""
    for user in node.users:
        if user.target in _AUGMENTED or user.kwargs.get("out") is node:
            return True
        name = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
        if isinstance(name, str) and name.endswith("_") and not name.startswith("_") and name != "is_":
            return True  # torch's in-place methods and functions: add_, index_add_, copy_, relu_ ...
    return False


#: ``h[i] = v`` and the augmented assignments (``h += v`` ...), as the graph records them.
_AUGMENTED = (operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
              operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
              operator.ilshift, operator.irshift)  # fmt: skip


def _gather(piece: fx.Node) -> tuple[fx.Node, fx.Node | None]:
    """``(source, index)`` of a piece ``source[index]`` (an index tensor) or ``source.index_select(0, index)``;
    ``(piece, None)`` otherwise."""
    args = piece.args
    if piece.op == "call_function" and piece.target is operator.getitem and len(args) == 2:
        source, index = args
    elif piece.op in ("call_function", "call_method") and piece.target in (torch.index_select, "index_select"):
        if len(args) != 3 or args[1] != 0 or piece.kwargs:
            return piece, None
        source, _, index = args
    else:
        return piece, None
    if isinstance(source, fx.Node) and isinstance(index, fx.Node):
        return source, index
    return piece, None


def relax(
    model: nn.Module,
    *,
    mode: Mode = "auto",
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    init_std: float = 1e-4,
    adapters: list[OpAdapter] | None = None,
    fuse: bool = True,
    scalar_sites: bool = False,
    on_nodes: bool = True,
) -> RelaxedModel:
    """Insert a branch ``θ · B(x)`` beside every known equivariant linear op of ``model``.

    Args:
        model: the user's equivariant model; it is shared, not copied.
        mode: ``"fx"`` (trace; fail if impossible), ``"hooks"`` (forward hooks), or ``"auto"`` (fx, else hooks).
        include, exclude: ``fnmatch`` globs on module paths selecting the sites; ``include`` may also name presets
            (``"@node_update"``, ``"@messages"``, ``"@nodes"``: :mod:`relaxcli.core.presets`).
        init_std: the branch weights start as ``N(0, init_std²)``; 0 starts exactly at the equivariant model.
        adapters: the op adapters to use (default: the registry, see :func:`relaxcli.register_op`). A model may
            bring adapters for its own ops as a callable attribute ``relax_adapters`` (a module from
            :func:`relaxcli.load_program` does: the sites recorded in the ``.pt2``); they are tried first, and the
            branches are attached with hooks.
        fuse: run an op and its branch as one product with the matrix ``op + θ W`` where the adapter can (VN
            linears, escnn convolutions): the same map at lower cost. False keeps them separate.
        scalar_sites: also relax ops that map invariants to invariants (``0e -> 0e``: the group acts trivially on
            both sides). A branch there cannot break equivariance, it only adds parameters, so by default such
            sites get none; they are listed in ``RelaxedModel.skipped`` with the reason.
        on_nodes: in fx mode, where a site's feature is ``cat([h[dst], h[src], e], -1)`` (a message built from
            gathered node features), compute its branch on the node rows, ``(W₁h)[dst] + (W₂h)[src] + W₃e``
            (:meth:`DenseBranch.gathered`): the same map at a fraction of the cost. False keeps it on the edges.

    Returns:
        a :class:`RelaxedModel`; θ starts at 0.

    Example:
        >>> relaxed = relax(model, exclude=["readout.*"])
        >>> [s.path for s in relaxed.sites]
    """
    if mode not in ("auto", "fx", "hooks"):
        raise ValueError(f"mode must be 'auto', 'fx' or 'hooks', got {mode!r}")
    own = getattr(model, "relax_adapters", None)  # adapters the model brings for its own ops (a .pt2 program)
    if own is not None:
        adapters, mode = list(own()) + (adapters or []), "hooks"
    include = expand_presets(  # "@node_update" -> the paths it selects
        model, include, lambda: site_roles(model, find_sites(model, adapters=adapters), _LeafTracer)
    )
    found = find_sites(model, include, exclude, adapters)
    if not found:
        raise RelaxError(
            f"no equivariant linear op to relax in {type(model).__name__} (include={list(include)}, "
            f"exclude={list(exclude)}); known ops: e3nn o3.Linear, e3nn tensor products with internal weights, "
            "Vector-Neuron linears, and ops registered with relaxcli.register_op"
        )
    sites = [
        Site(
            path,
            module,
            adapter,
            _site_branch(path, module, adapter, init_std),
            fused=fuse and adapter.can_fuse(module),
        )
        for path, module, adapter in found
    ]
    skipped = [] if scalar_sites else [(s.path, INVARIANT_SITE) for s in sites if _invariant(s.branch)]
    if skipped and len(skipped) == len(sites):
        paths = ", ".join(path for path, _ in skipped)
        raise RelaxError(
            f"every op found in {type(model).__name__} maps invariants to invariants ({paths}), so a branch could "
            "never break its equivariance and there is nothing to relax; set relax.scalar_sites: true "
            "(scalar_sites=True) to relax them anyway"
        )
    sites = [s for s in sites if s.path not in dict(skipped)]
    ref = next(iter(model.parameters()), None)
    if ref is not None:
        for s in sites:
            s.branch.to(device=ref.device, dtype=ref.dtype)
    if mode == "hooks":
        reason = "the model brings its own op adapters" if own is not None else "hooks requested"
        return RelaxedModel(model, sites, "hooks", fallback_reason=reason, skipped=skipped)
    if _has_hooks(model):  # a graph module runs the model's forward without calling the model: its hooks would not run
        reason = f"{type(model).__name__} carries hooks on itself, which a traced graph would not run"
        if mode == "fx":
            raise RelaxError(f"{reason}. Use mode 'hooks' (or 'auto'), or remove the hooks before relaxing.")
        return RelaxedModel(model, sites, "hooks", fallback_reason=reason, skipped=skipped)
    try:
        graph, kept_whole = _trace(model, sites, on_nodes)
    except Exception as e:  # fx raises many kinds of errors for untraceable code
        if mode == "fx":
            raise RelaxError(
                f"torch.fx cannot trace {type(model).__name__}: {e}. Use mode 'hooks' (or 'auto')."
            ) from None
        first_line = (str(e).splitlines() or ["no message"])[0]  # e.g. escnn's bare asserts on GeometricTensor
        reason = f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {first_line})"
        return RelaxedModel(model, sites, "hooks", fallback_reason=reason, skipped=skipped)
    return RelaxedModel(model, sites, "fx", graph=graph, kept_whole=kept_whole, skipped=skipped)


def _site_branch(path: str, module: nn.Module, adapter: OpAdapter, init_std: float) -> Branch:
    """The adapter's branch for the op at ``path``; a failure names the site and the op."""
    try:
        return adapter.site_branch(path, module, init_std)
    except (TypeError, ValueError, AttributeError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RelaxError(
            f"site {path} ({adapter.name}, a {type(module).__name__}): cannot attach a branch: {detail}"
        ) from None
