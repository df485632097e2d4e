"""Problem collection for recipe validation: every problem with the line (or override) it came from, and
"did you mean" suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

__all__ = ["KeyPath", "Problems", "INVALID", "dotted", "show", "suggest"]

INVALID = object()  # marks a value that failed validation (its problem is already recorded)

KeyPath = tuple[Union[str, int], ...]  # a key path, e.g. ("relax", "theta", "schedule")


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def show(value: Any) -> str:
    """A value for an error message: short repr plus its YAML-ish type."""
    if value is None:
        return "null"
    kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping"}
    text = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind.get(type(value), type(value).__name__)})"


def suggest(word: str, candidates: Iterable[str]) -> str:
    """ "; did you mean 'x'?" (or ""): close matches by difflib, case-insensitive, near the best one only."""
    by_lower = {c.lower(): c for c in candidates if isinstance(c, str)}
    scored = []
    for low, original in by_lower.items():
        ratio = difflib.SequenceMatcher(None, str(word).lower(), low).ratio()
        if ratio >= 0.6:
            scored.append((ratio, original))
    if not scored:
        return ""
    best = max(r for r, _ in scored)
    close = [c for r, c in sorted(scored, key=lambda x: -x[0]) if r >= best - 0.1][:3]
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


class Problems:
    """Collects problems during validation and knows where each key path came from."""

    def __init__(self, source: str, lines: dict[KeyPath, int], base_dir: Path | None) -> None:
        self.source, self.lines, self.base_dir = source, lines, base_dir
        self.origins: dict[KeyPath, tuple[int, str]] = {}  # key path -> (override index, "override '...'")
        self.problems: list[tuple[int, int, str]] = []  # (group, line or override index, message)

    def add(self, path: KeyPath, message: str) -> None:
        """Record a problem at ``path``; the most specific known location (override or line) wins."""
        group, order, loc = 1, 0, self.source  # group 0: file lines, 1: no line, 2: overrides
        prefixes = [path[:i] for i in range(len(path), -1, -1)]
        overridden = [p for p in prefixes if p in self.origins]  # an override replaces the whole subtree
        if overridden:
            (order, loc), group = self.origins[overridden[0]], 2
        else:
            known = [p for p in prefixes if p in self.lines]
            if known:
                order, group = self.lines[known[0]], 0
                loc = f"{self.source}:{order}"
        where = f"{dotted(path)}: " if path else ""
        self.problems.append((group, order, f"{loc}: {where}{message}"))

    def count(self) -> int:
        return len(self.problems)

    def messages(self) -> list[str]:
        return [m for _, _, m in sorted(self.problems, key=lambda p: (p[0], p[1]))]
