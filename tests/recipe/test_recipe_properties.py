"""Property-based: the built-in recipes, mutated (a key deleted, a value of another type, a number out of range, a key
misspelt), either load or raise one RecipeError; never another exception."""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any, Union

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaxcli.errors import RecipeError
from relaxcli.recipe import loads_recipe, recipe_from_dict
from relaxcli.recipe.yaml_io import dump_yaml

Path_ = tuple[Union[str, int], ...]

BUILTIN = {
    Path(str(p)).stem: yaml.safe_load(Path(str(p)).read_text())
    for p in (resources.files("relaxcli") / "recipes").iterdir()
    if str(p).endswith(".yaml")
}

#: Values of every YAML kind, including the awkward ones: huge and negative numbers, inf, nan, empty containers.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e30, -1e-30, 0.0]),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "1e-3",
            "true",
            "null",
            "torch.nn.MSELoss",
            "cartesian_points",
            "1x1o",
            "16x0e+16x1o",
            "builtins.print",
            "os.system",
            "relaxcli.tasks.SEGNN",
            "triangle",
            "ace_elastic",
            "cuda",
        ]
    ),
    st.lists(st.integers(-3, 3) | st.text(max_size=4) | st.none(), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(-2, 2) | st.none(), max_size=3),
)


def paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key path in a nested recipe (mapping keys and list items)."""
    out: list[Path_] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += paths(v, prefix + (k,))
    return out


def parent(data: Any, path: Path_) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


def misspell(key: str, i: int, how: int) -> str:
    if not key:
        return "x"
    i %= len(key)
    if how == 0:
        return key[:i] + key[i + 1 :] or "k"  # a letter dropped
    if how == 1:
        return key[:i] + key[i] * 2 + key[i + 1 :]  # a letter doubled
    j = min(i + 1, len(key) - 1)
    return key[:i] + key[j] + key[i] + key[j + 1 :]  # two letters swapped


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    name = draw(st.sampled_from(sorted(BUILTIN)))
    data = copy.deepcopy(BUILTIN[name])
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        where = paths(data)
        if not where:
            break
        path = draw(st.sampled_from(where))
        owner, key = parent(data, path), path[-1]
        kind = draw(st.sampled_from(["delete", "retype", "range", "misspell"]))
        if kind == "delete":
            del owner[key]
        elif kind == "retype":
            owner[key] = draw(VALUES)
        elif kind == "range":
            owner[key] = draw(st.sampled_from([-1, 0, -(10**9), 10**9, 2**63, 1e300, -0.5, math.inf, math.nan]))
        elif isinstance(owner, dict):
            new = misspell(str(key), draw(st.integers(0, 40)), draw(st.integers(0, 2)))
            owner[new] = owner.pop(key)
        edits.append(f"{kind} {path}")
    return name, data, "; ".join(edits)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_builtin_recipes_load_or_raise_recipe_error(case: tuple[str, dict[str, Any], str]) -> None:
    name, data, edits = case
    for load in (lambda: loads_recipe(dump_yaml(data), f"{name}.yaml"), lambda: recipe_from_dict(data)):
        try:
            load()
        except RecipeError as exc:
            assert exc.problems and exc.exit_code == 2, edits
            assert all(isinstance(p, str) and p for p in exc.problems), edits
            assert "Traceback" not in str(exc), edits


@st.composite
def overrides(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A built-in recipe and KEY=VALUE overrides: real keys with values of any kind, or arbitrary text."""
    name = draw(st.sampled_from(sorted(BUILTIN)))
    keys = [".".join(map(str, p)) for p in paths(BUILTIN[name]) if all(isinstance(k, str) for k in p)]
    real = st.tuples(
        st.sampled_from(keys),
        VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
    )
    pairs = draw(st.lists(real | st.tuples(st.text(max_size=20), st.text(max_size=20)), min_size=1, max_size=3))
    return name, [f"{k}={v}" for k, v in pairs]


@settings(max_examples=100, deadline=None)
@given(overrides())
def test_overrides_load_or_raise_recipe_error(case: tuple[str, list[str]]) -> None:
    name, given_overrides = case
    try:
        loads_recipe(dump_yaml(BUILTIN[name]), f"{name}.yaml", given_overrides)
    except RecipeError as exc:
        assert exc.problems and exc.exit_code == 2, given_overrides


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_recipes_are_in_the_property_tests(name: str) -> None:
    assert paths(BUILTIN[name])  # every built-in recipe has keys to mutate
