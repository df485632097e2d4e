"""Command-line overrides ``a.b.c=value``, applied to the parsed recipe before validation."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from .problems import Problems, show
from .yaml_io import Loader, preset_hint

__all__ = ["apply_overrides"]


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A bare ``@preset`` as the whole value or as an item of a flow list, which YAML cannot read unquoted.
_PRESET_RE = re.compile(r"(^\s*|[\[,]\s*)(@[A-Za-z_][A-Za-z0-9_]*)(?=\s*(?:[\],]|$))")


def _quote_presets(raw: str) -> str:
    """``[@node_update, "*.mlp"]`` -> ``["@node_update", "*.mlp"]``: on a command line, presets need no quotes."""
    return _PRESET_RE.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', raw)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], ctx: Problems) -> None:
    """Apply ``a.b.c=value`` overrides to ``data`` in place, recording in ``ctx`` where each path came from."""
    for index, text in enumerate(overrides):
        where = f"override {text!r}"
        key, sep, raw = text.partition("=")
        key = key.strip()
        parts = key.split(".")

        def bad(message: str) -> None:
            ctx.problems.append((2, index, f"{where}: {message}"))  # noqa: B023  (called in this iteration only)

        if not sep or not key:
            bad("expected KEY=VALUE, e.g. trainer.epochs=5")
            continue
        if not all(_KEY_RE.match(p) for p in parts):
            extra = "; '+key' and '~key' are not supported: set the key directly" if key[0] in "+~" else ""
            bad(f"invalid key {key!r}{extra}")
            continue
        try:
            value = yaml.load(_quote_presets(raw), Loader=Loader) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = str(getattr(exc, "problem", None) or exc)
            bad(f"invalid YAML value: {problem}{preset_hint(problem)}")
            continue
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent or null: create the mapping
                node[part] = {}
                ctx.origins.setdefault(tuple(parts[: i + 1]), (index, where))
            elif not isinstance(node[part], dict):
                bad(f"{'.'.join(parts[: i + 1])} is {show(node[part])}, not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
            path = tuple(parts)
            for p in [p for p in ctx.origins if p[: len(path)] == path]:  # a later override replaces earlier ones
                del ctx.origins[p]
            ctx.origins[path] = (index, where)
