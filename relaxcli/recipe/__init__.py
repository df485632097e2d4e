"""Recipes: the YAML file that says what to train and how.

A recipe names its components by import path, torchtune style, and configures the trainer and the constraint
relaxation in small typed sections::

    name: tetris-relaxed
    seed: 0
    model:
      _component_: mypkg.models.Tetris
      hidden: 16x0e+16x1o
    data:
      _component_: mypkg.data.tetris
    optimizer:
      _component_: torch.optim.Adam
      lr: 1e-3
    trainer:
      epochs: 50
    relax:
      theta: {schedule: triangle, max: 1.0}

Loading checks everything at once (unknown keys, types, ranges, choices, importable components, keyword arguments
against signatures) and raises one :class:`~relaxcli.errors.RecipeError` listing every problem with its line::

    recipe.yaml:12: relax.theta.shedule: unknown key; did you mean 'schedule'?

The pieces, one concern each: :mod:`.schema` (the typed sections), :mod:`.yaml_io` (YAML with line numbers),
:mod:`.validate` (the generic walker and the loading API), :mod:`.components` (``_component_`` import, signature
check, :func:`instantiate`), :mod:`.overrides` (``KEY=VALUE``), :mod:`.problems` (messages with locations).
"""

from .components import ComponentSpec, instantiate
from .schema import (
    BranchConfig,
    OpConfig,
    Recipe,
    RegularizerConfig,
    RelaxConfig,
    SymmetryConfig,
    ThetaConfig,
    TrainerConfig,
)
from .validate import dump_recipe, load_recipe, loads_recipe, locate, recipe_from_dict

__all__ = [
    "Recipe",
    "ComponentSpec",
    "TrainerConfig",
    "BranchConfig",
    "RegularizerConfig",
    "ThetaConfig",
    "OpConfig",
    "RelaxConfig",
    "SymmetryConfig",
    "load_recipe",
    "loads_recipe",
    "recipe_from_dict",
    "locate",
    "dump_recipe",
    "instantiate",
]
