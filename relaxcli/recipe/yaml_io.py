"""Reading and writing recipe YAML: a safe loader that also reads 1e-3 as a float (PyYAML needs "1.0e-3"),
the line of every key (for error messages), duplicate keys, and the dumper of resolved recipes."""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import RecipeError
from .problems import KeyPath

__all__ = ["Loader", "Dumper", "parse_yaml", "dump_yaml"]


_FLOAT = "tag:yaml.org,2002:float"
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _with_float_resolver(cls: Any) -> Any:
    cls.yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT]
        for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    cls.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
    return cls


@_with_float_resolver
class Loader(yaml.SafeLoader):
    pass


@_with_float_resolver
class Dumper(yaml.SafeDumper):
    """Same resolvers as the loader, so a string like '1e-3' gets quoted on dump."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (dict, list)) for x in data)  # [a, b] for short scalar lists
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


Dumper.add_representer(list, _represent_list)

def _line_map(node: yaml.Node, problems: list[tuple[KeyPath, str]]) -> dict[KeyPath, int]:
    """Map every key path in a composed YAML document to its (1-based) line. Flags duplicate keys."""
    lines: dict[KeyPath, int] = {}
    stack: set[int] = set()

    def walk(n: yaml.Node, path: KeyPath, merged: bool = False) -> None:
        if id(n) in stack:  # recursive anchors
            return
        stack.add(id(n))
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                if k.tag == "tag:yaml.org,2002:merge":  # "<<: *base": keys defined here win
                    for m in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                        walk(m, path, merged=True)
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    continue
                key, line = k.value, k.start_mark.line + 1
                if key in seen and not merged:
                    message = f"duplicate key (first on line {seen[key]}); YAML keeps the last one"
                    problems.append((path + (key,), message))
                seen[key] = line
                if merged and path + (key,) in lines:
                    continue
                lines[path + (key,)] = line
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))
        stack.discard(id(n))

    walk(node, ())
    return lines


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int], list[tuple[KeyPath, str]]]:
    """Parse YAML text safely. Returns (data, lines, duplicate-key problems)."""
    try:
        node = yaml.compose(text, Loader=Loader)
        data = yaml.load(text, Loader=Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        detail = exc.problem or "parse error"
        if exc.context:
            detail += f" ({exc.context})"
        raise RecipeError([f"{where}: invalid YAML: {detail}"], source) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{source}: invalid YAML: {exc}"], source) from None
    dupes: list[tuple[KeyPath, str]] = []
    lines = _line_map(node, dupes) if node is not None else {}
    return data, lines, dupes


def dump_yaml(data: Any) -> str:
    """The recipe as YAML text, keys in schema order, every default filled in.

    Example::

        print(dump_recipe(load_recipe("recipe.yaml")))   # what --print-config shows
    """
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


