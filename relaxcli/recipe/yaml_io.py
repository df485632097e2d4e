"""Reading and writing recipe YAML: a safe loader that also reads 1e-3 as a float (PyYAML needs "1.0e-3"),
the line of every key (for error messages), duplicate keys, and the dumper of resolved recipes."""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import RecipeError
from .problems import KeyPath

__all__ = ["Loader", "Dumper", "MAX_VALUES", "parse_yaml", "dump_yaml"]


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


#: The most values (scalars, lists and mappings) a recipe may hold with its aliases expanded. A real recipe holds a
#: few hundred; a "billion laughs" file, a handful of nested aliases, expands to ~10**9 and is refused at once.
MAX_VALUES = 20_000


class _CountingLoader(Loader):
    """The recipe loader, stopping as soon as more than :data:`MAX_VALUES` nodes have been composed (a long file of
    values is refused without parsing all of it)."""

    source = "recipe"
    composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > MAX_VALUES:
            line = self.peek_event().start_mark.line + 1
            raise RecipeError(
                [
                    f"{self.source}:{line}: the recipe holds more than {MAX_VALUES} values; refusing it (a "
                    "recipe holds a few hundred)"
                ],
                self.source,
            )
        return super().compose_node(parent, index)


def _check_expansion(node: yaml.Node, source: str) -> None:
    """Refuse a composed document whose aliases expand past :data:`MAX_VALUES` values, or refer to a node that
    contains them (a recursive structure). Counts each shared node once per use without expanding it: linear time."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def refuse(n: yaml.Node, message: str) -> None:
        raise RecipeError([f"{source}:{n.start_mark.line + 1}: {message}"], source)

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            refuse(
                n,
                "a YAML alias refers to a node that contains it (a recursive structure); a recipe must be a "
                "tree of values",
            )
        open_nodes.add(key)
        if isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = n.value if isinstance(n, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                refuse(
                    n,
                    f"the recipe holds more than {MAX_VALUES} values once its YAML aliases are expanded; "
                    "refusing it (a recipe holds a few hundred; is this a 'billion laughs' file?)",
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(node)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int], list[tuple[KeyPath, str]]]:
    """Parse YAML text safely. Returns (data, lines, duplicate-key problems).

    Aliases are counted before anything is built from them: a document that expands past :data:`MAX_VALUES` values
    (or nests deeper than Python's recursion limit) is a RecipeError, not a hang or a crash."""
    try:
        loader = _CountingLoader(text)
        loader.source = source
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node, source)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise RecipeError([f"{source}: invalid YAML: nested too deeply"], source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        detail = exc.problem or "parse error"
        if exc.context:
            detail += f" ({exc.context})"
        raise RecipeError([f"{where}: invalid YAML: {detail}{preset_hint(detail)}"], source) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{source}: invalid YAML: {exc}"], source) from None
    dupes: list[tuple[KeyPath, str]] = []
    lines = _line_map(node, dupes) if node is not None else {}
    return data, lines, dupes


def preset_hint(problem: str) -> str:
    """A hint for YAML's complaint about an unquoted ``@preset`` (``@`` cannot start a plain YAML value)."""
    if "found character '@'" not in problem:
        return ""
    return '; a preset in relax.include is a string that YAML needs quoted: include: ["@node_update"]'


def dump_yaml(data: Any) -> str:
    """The recipe as YAML text, keys in schema order, every default filled in.

    Example::

        print(dump_recipe(load_recipe("recipe.yaml")))   # what --print-config shows
    """
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
