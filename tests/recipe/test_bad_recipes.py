"""The bad-recipe corpus: every case must get a clean answer from ``relax train RECIPE --dry-run``.

A clean answer is a non-zero exit (2 for a recipe problem; 1 only for a genuine runtime failure, reported as one
paragraph naming its cause), a message naming the offending key (or file), and no traceback. Every case runs in this
process through what ``--dry-run`` runs (load the recipe, build the trainer, one training step); the cases marked
``cli`` also run through the real ``relax`` command. Each case is data: a change to a tiny valid recipe (or raw YAML
text, or a special file), the fragment the message must contain, and the exit code.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import nbody_recipe_data

from relaxcli.errors import RelaxError
from relaxcli.recipe import load_recipe
from relaxcli.recipe.validate import MAX_RECIPE_BYTES
from relaxcli.recipe.yaml_io import MAX_VALUES

DELETE = object()  # a value in Bad.set: remove the key

#: A tiny point-cloud classifier recipe (VN-PointNet on 8 shape classes).
POINTCLOUD: dict[str, Any] = {
    "name": "tiny-pc",
    "seed": 0,
    "model": {"_component_": "relaxcli.tasks.VNPointNet", "num_classes": 8, "hidden": 4, "num_layers": 1},
    "data": {"_component_": "relaxcli.tasks.PointCloudData", "train": 16, "val": 8, "test": 8, "num_points": 16},
    "loss": {"_component_": "torch.nn.CrossEntropyLoss"},
    "optimizer": {"_component_": "torch.optim.Adam", "lr": 0.001},
    "trainer": {"epochs": 2, "batch_size": 8, "device": "cpu", "metrics": ["accuracy"]},
    "symmetry": {"inputs": ["cartesian_points"], "output": None, "translation": False},
    "relax": {"theta": {"schedule": "constant"}},
}


@dataclass(frozen=True)
class Bad:
    """One bad recipe: ``set`` changes the tiny recipe (dotted key -> value; DELETE removes it), or ``text`` is the
    whole file, or ``file`` is a special file; ``key`` must appear in the message."""

    id: str
    key: str
    set: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    file: str | None = None  # fifo | dir | devzero | missing | big | binary
    overrides: tuple[str, ...] = ()
    base: str = "nbody"  # nbody | pointcloud
    exit: int = 2
    cli: bool = False


def billion_laughs(levels: int = 9) -> str:
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\nname: laughs\n"


def quadratic_blowup() -> str:
    """One big anchored list used many times: few aliases, many values."""
    return "big: &big [" + ", ".join(["x"] * 2000) + "]\nname: q\nmany: [" + ", ".join(["*big"] * 100) + "]\n"


NOT_FINITE = [("inf", math.inf), ("minus-inf", -math.inf), ("nan", math.nan)]


def cases() -> list[Bad]:
    c: list[Bad] = []
    add = c.append

    # -- the file itself: not a regular file, too big, not YAML, alias bombs -------------------------------------
    add(Bad("file-fifo", "fifo.yaml", file="fifo", cli=True))
    add(Bad("file-directory", "dir.yaml", file="dir"))
    add(Bad("file-dev-zero", "/dev/zero", file="devzero"))
    add(Bad("file-missing", "missing.yaml", file="missing"))
    add(Bad("file-too-big", "big.yaml", file="big"))
    add(Bad("file-not-utf8", "binary.yaml", file="binary"))
    add(Bad("yaml-billion-laughs", "recipe.yaml", text=billion_laughs(), cli=True))
    add(Bad("yaml-billion-laughs-small", "recipe.yaml", text=billion_laughs(6)))
    add(Bad("yaml-quadratic-blowup", "recipe.yaml", text=quadratic_blowup()))
    add(Bad("yaml-too-many-values", "recipe.yaml", text="name: x\nmany: [" + "1, " * (MAX_VALUES + 10) + "]\n"))
    add(Bad("yaml-recursive-alias", "recipe.yaml", text="name: &a [*a]\n"))
    add(Bad("yaml-recursive-mapping", "recipe.yaml", text="model: &m {inner: *m}\n"))
    add(Bad("yaml-nested-too-deeply", "recipe.yaml", text="name: " + "[" * 1000 + "]" * 1000 + "\n"))
    add(Bad("yaml-empty", "recipe.yaml", text=""))
    add(Bad("yaml-only-comments", "recipe.yaml", text="# a comment\n# another\n"))
    add(Bad("yaml-top-level-list", "recipe.yaml", text="- name\n- model\n"))
    add(Bad("yaml-top-level-scalar", "recipe.yaml", text="just a string\n"))
    add(Bad("yaml-top-level-number", "recipe.yaml", text="42\n"))
    add(Bad("yaml-unclosed-bracket", "recipe.yaml", text="name: x\nmodel: {_component_: torch.nn.Linear\n"))
    add(Bad("yaml-bad-indent", "recipe.yaml", text="name: x\nmodel:\n  a: 1\n b: 2\n", cli=True))
    add(Bad("yaml-tab-indent", "recipe.yaml", text="name: x\nmodel:\n\t_component_: torch.nn.Linear\n"))
    add(Bad("yaml-python-tag", "recipe.yaml", text="name: !!python/object/apply:os.system [echo hi]\n"))
    add(Bad("yaml-custom-tag", "recipe.yaml", text="name: !secret x\n"))
    add(Bad("yaml-two-documents", "recipe.yaml", text="name: a\n---\nname: b\n"))
    add(Bad("yaml-undefined-alias", "recipe.yaml", text="name: *nothing\n"))
    add(
        Bad(
            "yaml-duplicate-key",
            "trainer.epochs",
            text=yaml.safe_dump(nbody_recipe_data(), sort_keys=False).replace(
                "  epochs: 4\n", "  epochs: 4\n  epochs: 5\n"
            ),
        )
    )
    add(Bad("yaml-key-not-string", "recipe", text="name: x\n1: 2\n"))

    # -- top-level keys --------------------------------------------------------------------------------------------
    for section in ("name", "model", "data", "optimizer", "trainer"):
        add(Bad(f"missing-{section}", section, set={section: DELETE}))
    for wrong in ("optimiser", "trainr", "symetry", "sead"):
        add(Bad(f"misspelt-{wrong}", wrong, set={wrong: {}}))
    for label, value in (("empty", ""), ("blank", "   "), ("number", 5), ("null", None), ("list", ["a"])):
        add(Bad(f"name-{label}", "name", set={"name": value}))
    for label, value in (
        ("negative", -1),
        ("string", "abc"),
        ("float", 1.5),
        ("bool", True),
        ("list", [1]),
        ("past-2-63", 2**63),
        ("past-2-64", 2**64),
        ("past-2-32", 2**32),
    ):
        add(Bad(f"seed-{label}", "seed", set={"seed": value}, cli=label == "past-2-64"))
    for section in ("trainer", "relax", "symmetry"):
        add(Bad(f"{section}-not-a-mapping", section, set={section: 5}))
        add(Bad(f"{section}-a-list", section, set={section: [1, 2]}))

    # -- trainer ---------------------------------------------------------------------------------------------------
    for key, values in {
        "epochs": [0, -1, "ten", 2.5, True, 10**8, 10**30, 1e30, None],
        "batch_size": [0, -5, "big", 2.5, 10**20, None],
        "eval_batch_size": [0, -1, "all"],
        "eval_every": [0, "often"],
        "checkpoint_every": [0, -3],
        "log_every": [0, 1.5],
        "num_workers": [-1, 10**6, "two"],
        "threads": [0, -1, 10**5, 2**63, 2**64, "many"],
        "max_steps": [0, -1, "forever"],
        "grad_clip": [0, -1.0, math.inf, math.nan, "x"],
        "device": ["gpu", "CPU", 0],
        "dtype": ["float16", "float", 64],
        "metrics": [["acuracy"], "accuracy", [5]],
    }.items():
        for value in values:
            cli = (key, value) in (("epochs", 1e30), ("threads", 2**64))
            add(Bad(f"trainer-{key}-{value!r}", f"trainer.{key}", set={f"trainer.{key}": value}, cli=cli))
    add(Bad("trainer-epochs-missing", "trainer.epochs", set={"trainer.epochs": DELETE}))
    for wrong in ("epoch", "devcie", "lr", "batchsize"):
        add(Bad(f"trainer-unknown-{wrong}", f"trainer.{wrong}", set={f"trainer.{wrong}": 1}))
    add(Bad("trainer-batch-larger-than-data", "trainer.batch_size", set={"trainer.batch_size": 64}, cli=True))
    add(Bad("trainer-batch-just-larger", "trainer.batch_size", set={"trainer.batch_size": 41}))

    # -- relax -----------------------------------------------------------------------------------------------------
    for key, values in {
        "enabled": ["yes", "False", 1],
        "mode": ["graph", True],
        "include": ["*", [5]],
        "exclude": [5],
        "fuse": ["no"],
        "ops": [5, [{"layer": "nope.Layer"}], [{"layer": "torch.nn.Linear", "action": "vectorz"}], [{}]],
        "branch.init_std": [-1, math.inf, "small"],
        "regularizer.weight": [-0.1, math.nan, "heavy"],
        "regularizer.source": ["both"],
        "regularizer.rows": [0, 2.5],
        "regularizer.lie": ["true"],
        "theta.schedule": ["cosin", 5, "Triangle"],
        "theta.max": [-1, math.inf, math.nan],
        "theta.granularity": ["batch"],
        "theta.end": [0, 1.5, -0.5],
    }.items():
        for value in values:
            add(Bad(f"relax-{key}-{value!r}", f"relax.{key}", set={f"relax.{key}": value}))
    add(Bad("relax-theta-misspelt", "relax.theta.shedule", set={"relax.theta.shedule": "constant"}))
    add(Bad("relax-unknown-key", "relax.enable", set={"relax.enable": True}))
    add(Bad("relax-ace-dual-lr-zero", "relax.theta.dual_lr", set={"relax.theta": {"schedule": "ace", "dual_lr": 0}}))
    add(Bad("relax-rho-with-ace", "relax.theta.rho", set={"relax.theta": {"schedule": "ace", "rho": 2.0}}))
    add(Bad("relax-end-with-ace", "relax.theta.end", set={"relax.theta": {"schedule": "ace", "end": 0.5}}))
    add(Bad("relax-gamma-lr-zero", "relax.theta.gamma_lr", set={"relax.theta": {"schedule": "ace", "gamma_lr": 0}}))
    add(
        Bad(
            "relax-gamma-init-inf",
            "relax.theta.gamma_init",
            set={"relax.theta": {"schedule": "ace", "gamma_init": math.inf}},
        )
    )

    # -- symmetry --------------------------------------------------------------------------------------------------
    inputs = ["cartesian_points", "1x1o", None]
    add(Bad("symmetry-more-inputs", "symmetry.inputs", set={"symmetry.inputs": [*inputs, "1x0e"]}, cli=True))
    add(Bad("symmetry-fewer-inputs", "symmetry.inputs", set={"symmetry.inputs": inputs[:2]}))
    add(Bad("symmetry-no-inputs", "symmetry.inputs", set={"symmetry.inputs": []}))
    add(Bad("symmetry-inputs-a-string", "symmetry.inputs", set={"symmetry.inputs": "1x1o"}))
    add(Bad("symmetry-inputs-missing", "symmetry.inputs", set={"symmetry.inputs": DELETE}))
    add(Bad("symmetry-output-missing", "symmetry.output", set={"symmetry.output": DELETE}))
    add(Bad("symmetry-bad-irreps", "symmetry.inputs[1]", set={"symmetry.inputs": ["cartesian_points", "1x1", None]}))
    add(Bad("symmetry-bad-output", "symmetry.output", set={"symmetry.output": "16x0e+16xo"}))
    add(Bad("symmetry-empty-irreps", "symmetry.output", set={"symmetry.output": ""}))
    add(Bad("symmetry-attribute-name-o3", "symmetry.output", set={"symmetry.output": "out_type"}))
    add(Bad("symmetry-group", "symmetry.group", set={"symmetry.group": "so3"}))
    add(Bad("symmetry-parity-string", "symmetry.parity", set={"symmetry.parity": "true"}))
    add(
        Bad(
            "symmetry-escnn-parity",
            "symmetry",
            set={"symmetry": {"inputs": ["in_type"], "output": "out_type", "group": "escnn", "parity": False}},
        )
    )

    # -- model -----------------------------------------------------------------------------------------------------
    segnn = "relaxcli.tasks.SEGNN"
    for label, value, key in (
        ("no-component", {"hidden_irreps": "4x0e"}, "model._component_"),
        ("component-number", {"_component_": 5}, "model._component_"),
        ("component-misspelt", {"_component_": "relaxcli.tasks.SEGN"}, "model._component_"),
        ("component-no-module", {"_component_": "nowhere.Model"}, "model._component_"),
        ("component-one-word", {"_component_": "SEGNN"}, "model._component_"),
        ("component-a-module", {"_component_": "relaxcli.tasks"}, "model._component_"),
        ("component-not-callable", {"_component_": "math.pi"}, "model._component_"),
        ("a-string", "relaxcli.tasks.SEGNN", "model"),
        ("null", None, "model"),
        ("unknown-argument", {"_component_": segnn, "hidden": 4}, "model.hidden"),
        ("reserved-key", {"_component_": segnn, "_target_": "x"}, "model._target_"),
        ("weights-missing-file", {"_component_": segnn, "_weights_": "nope.safetensors"}, "model._weights_"),
        ("weights-a-number", {"_component_": segnn, "_weights_": 5}, "model._weights_"),
        ("hidden-irreps-int", {"_component_": segnn, "hidden_irreps": 5}, "model.hidden_irreps"),
        ("hidden-irreps-list", {"_component_": segnn, "hidden_irreps": ["4x0e"]}, "model.hidden_irreps"),
        ("hidden-irreps-bad", {"_component_": segnn, "hidden_irreps": "4x0q", "num_layers": 1}, "model"),
        (
            "num-layers-negative",
            {"_component_": segnn, "hidden_irreps": "4x0e+4x1o", "num_layers": -1},
            "model.num_layers",
        ),
        ("num-layers-zero", {"_component_": segnn, "hidden_irreps": "4x0e+4x1o", "num_layers": 0}, "model.num_layers"),
        ("num-layers-string", {"_component_": segnn, "num_layers": "two"}, "model.num_layers"),
        ("num-layers-float", {"_component_": segnn, "num_layers": 1.5}, "model.num_layers"),
        ("num-layers-bool", {"_component_": segnn, "num_layers": True}, "model.num_layers"),
        ("num-layers-inf", {"_component_": segnn, "num_layers": math.inf}, "model.num_layers"),
        (
            "lmax-negative",
            {"_component_": segnn, "hidden_irreps": "4x0e+4x1o", "num_layers": 1, "lmax_attr": -1},
            "model.lmax_attr",
        ),
        ("not-a-module", {"_component_": "builtins.dict"}, "model"),
        ("returns-none", {"_component_": "builtins.print"}, "model"),
    ):
        cli = label in ("hidden-irreps-int", "num-layers-negative")
        add(Bad(f"model-{label}", key, set={"model": value}, cli=cli))
    add(Bad("model-weights-in-optimizer", "optimizer._weights_", set={"optimizer._weights_": "x.safetensors"}))

    # -- data ------------------------------------------------------------------------------------------------------
    for key, value, where in (
        ("train", 0, "data.train"),
        ("val", 0, "data.val"),
        ("test", 0, "data.test"),
        ("train", -1, "data.train"),
        ("val", -5, "data.val"),
        ("train", "many", "data.train"),
        ("train", 1.5, "data.train"),
        ("train", None, "data.train"),
        ("field", "strong", "data.field"),
        ("field", math.inf, "data.field"),
        ("field", math.nan, "data.field"),
        ("frames", [40, 30], "data.frames"),
        ("frames", 5, "data.frames"),
        ("frames", [1], "data.frames"),
        ("frames", [1, "a"], "data.frames"),
        ("num_particles", 1, "data.num_particles"),
        ("num_particles", "five", "data.num_particles"),
        ("cache", "no", "data.cache"),
        ("seed", -1, "data.seed"),
        ("seed", "x", "data.seed"),
        ("size", 10, "data.size"),
    ):
        cli = (key, value) in (("train", 0), ("val", 0))
        add(Bad(f"data-{key}-{value!r}", where, set={f"data.{key}": value}, cli=cli))
    add(Bad("data-component-misspelt", "data._component_", set={"data._component_": "relaxcli.tasks.NBodyDat"}))
    add(Bad("data-without-splits", "data", set={"data": {"_component_": "torch.nn.Identity"}}))
    add(Bad("data-empty-dict", "data", set={"data": {"_component_": "builtins.dict"}}))
    add(Bad("data-a-list", "data", set={"data": ["relaxcli.tasks.NBodyData"]}))

    # -- optimizer -------------------------------------------------------------------------------------------------
    for key, value, where in (
        ("lr", "abc", "optimizer.lr"),
        ("lr", math.inf, "optimizer.lr"),
        ("lr", -math.inf, "optimizer.lr"),
        ("lr", math.nan, "optimizer.lr"),
        ("lr", [0.1], "optimizer.lr"),
        ("lr", None, "optimizer.lr"),
        ("lr", True, "optimizer.lr"),
        ("lr", -1, "optimizer"),
        ("lr", 10**400, "optimizer.lr"),
        ("betas", 0.9, "optimizer.betas"),
        ("betas", [0.9], "optimizer.betas"),
        ("betas", [0.9, "x"], "optimizer.betas"),
        ("betas", [0.9, math.inf], "optimizer.betas"),
        ("eps", "tiny", "optimizer.eps"),
        ("weight_decay", math.nan, "optimizer.weight_decay"),
        ("amsgrad", "yes", "optimizer.amsgrad"),
        ("lrr", 0.1, "optimizer.lrr"),
        ("params", [], "optimizer.params"),
    ):
        cli = (key, value) in (("lr", "abc"), ("lr", math.inf))
        add(Bad(f"optimizer-{key}-{value!r}", where, set={f"optimizer.{key}": value}, cli=cli))
    for label, target, key in (
        ("print", "builtins.print", "optimizer._component_"),
        ("list", "builtins.list", "optimizer._component_"),
        ("a-module", "torch.nn.Linear", "optimizer.out_features"),
        ("a-scheduler", "torch.optim.lr_scheduler.StepLR", "optimizer.step_size"),
        ("base-class", "torch.optim.Optimizer", "optimizer.defaults"),
        ("misspelt", "torch.optim.Adamm", "optimizer._component_"),
        ("no-arguments", "builtins.object", "optimizer._component_"),
    ):
        add(Bad(f"optimizer-component-{label}", key, set={"optimizer": {"_component_": target}}, cli=label == "print"))
    add(Bad("optimizer-print-with-lr", "optimizer.lr", set={"optimizer._component_": "builtins.print"}))
    add(
        Bad(
            "optimizer-sgd-momentum-string",
            "optimizer.momentum",
            set={"optimizer": {"_component_": "torch.optim.SGD", "lr": 0.1, "momentum": "high"}},
        )
    )

    # -- loss ------------------------------------------------------------------------------------------------------
    for label, value, key in (
        ("misspelt", {"_component_": "torch.nn.MSELos"}, "loss._component_"),
        ("a-string", "torch.nn.MSELoss", "loss"),
        ("reduction-int", {"_component_": "torch.nn.MSELoss", "reduction": 5}, "loss.reduction"),
        ("reduction-avg", {"_component_": "torch.nn.MSELoss", "reduction": "avg"}, "loss"),
        ("reduction-none", {"_component_": "torch.nn.MSELoss", "reduction": "none"}, "loss"),
        ("returns-none", {"_component_": "builtins.print"}, "loss._component_"),
        ("len", {"_component_": "builtins.len"}, "loss"),
        ("unknown-argument", {"_component_": "torch.nn.MSELoss", "weight": 2}, "loss.weight"),
        (
            "label-smoothing-string",
            {"_component_": "torch.nn.CrossEntropyLoss", "label_smoothing": "x"},
            "loss.label_smoothing",
        ),
    ):
        add(Bad(f"loss-{label}", key, set={"loss": value}, cli=label == "reduction-avg"))

    # -- lr scheduler ----------------------------------------------------------------------------------------------
    cosine, step = "torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.StepLR"
    for label, value, key in (
        ("t-max-zero", {"_component_": cosine, "T_max": 0}, "T_max"),
        ("t-max-string", {"_component_": cosine, "T_max": "ten"}, "scheduler.T_max"),
        ("t-max-missing", {"_component_": cosine}, "scheduler.T_max"),
        ("eta-min-inf", {"_component_": cosine, "T_max": 4, "eta_min": math.inf}, "scheduler.eta_min"),
        ("step-size-zero", {"_component_": step, "step_size": 0}, "step_size"),
        ("gamma-negative", {"_component_": step, "step_size": 1, "gamma": -1.0}, "gamma"),
        ("gamma-string", {"_component_": step, "step_size": 1, "gamma": "x"}, "scheduler.gamma"),
        ("plateau", {"_component_": "torch.optim.lr_scheduler.ReduceLROnPlateau"}, "scheduler"),
        ("print", {"_component_": "builtins.print"}, "scheduler._component_"),
        ("an-optimizer", {"_component_": "torch.optim.Adam"}, "scheduler"),
        ("optimizer-given", {"_component_": step, "step_size": 1, "optimizer": "x"}, "scheduler.optimizer"),
        ("unknown-argument", {"_component_": cosine, "T_maxx": 4}, "scheduler.T_maxx"),
        (
            "milestones-int",
            {"_component_": "torch.optim.lr_scheduler.MultiStepLR", "milestones": 5},
            "scheduler.milestones",
        ),
        ("lambda-missing", {"_component_": "torch.optim.lr_scheduler.LambdaLR"}, "scheduler.lr_lambda"),
        ("no-component", {"T_max": 4}, "scheduler._component_"),
    ):
        add(Bad(f"scheduler-{label}", key, set={"scheduler": value}, cli=label == "t-max-zero"))

    # -- overrides -------------------------------------------------------------------------------------------------
    for label, override, key in (
        ("type", "trainer.epochs=ten", "trainer.epochs"),
        ("no-equals", "trainer.epochs", "trainer.epochs"),
        ("plus", "+seed=1", "+seed"),
        ("unknown", "trainer.epcohs=5", "trainer.epcohs"),
        ("section-scalar", "trainer=5", "trainer"),
        ("into-scalar", "name.x=1", "name"),
        ("lr-string", "optimizer.lr=abc", "optimizer.lr"),
        ("lr-inf", "optimizer.lr=.inf", "optimizer.lr"),
        ("seed-huge", "seed=99999999999999999999", "seed"),
        ("bad-yaml", "trainer.epochs=[1", "trainer.epochs"),
        ("threads-huge", f"trainer.threads={2**64}", "trainer.threads"),
    ):
        add(Bad(f"override-{label}", key, overrides=(override,), cli=label == "lr-string"))

    # -- classifiers -----------------------------------------------------------------------------------------------
    for label, changes, key in (
        ("label-past-classes", {"model.num_classes": 6}, "model.num_classes"),
        ("one-class", {"model.num_classes": 1}, "model.num_classes"),
        ("classes-string", {"model.num_classes": "eight"}, "model.num_classes"),
        ("classes-missing", {"model.num_classes": DELETE}, "model.num_classes"),
        ("k-zero", {"model.k": 0}, "model.k"),
        ("layers-zero", {"model.num_layers": 0}, "model.num_layers"),
        ("unknown-class", {"data.classes": ["sphere", "blob"]}, "data.classes"),
        ("noise-negative", {"data.noise": -1.0}, "data.noise"),
        ("batch-larger-than-data", {"trainer.batch_size": 32}, "trainer.batch_size"),
        ("symmetry-two-inputs", {"symmetry.inputs": ["cartesian_points", None]}, "symmetry.inputs"),
    ):
        add(Bad(f"pointcloud-{label}", key, set=changes, base="pointcloud", cli=label == "label-past-classes"))

    # -- runtime: the loss is not finite at step 0 (exit 1, one paragraph) -----------------------------------------
    add(Bad("runtime-branch-init-huge", "loss became", set={"relax.branch.init_std": 1e30}, exit=1, cli=True))
    add(Bad("relax-theta-max-past-float32", "relax.theta.max", set={"relax.theta.max": 1e300}))
    add(Bad("relax-init-std-past-float32", "relax.branch.init_std", set={"relax.branch.init_std": 1e39}))
    add(
        Bad(
            "runtime-theta-max-huge",
            "loss became",
            set={"relax.theta.max": 1e30, "relax.branch.init_std": 1e10},
            exit=1,
        )
    )
    add(
        Bad(
            "runtime-regularizer-weight-huge",
            "loss became",
            set={"relax.regularizer.weight": 1e308, "relax.branch.init_std": 1e10},
            exit=1,
        )
    )
    return c


CASES = cases()
CLI_CASES = [case for case in CASES if case.cli]


def recipe_data(case: Bad) -> dict[str, Any]:
    """The tiny recipe with the case's changes."""
    data = copy.deepcopy(POINTCLOUD if case.base == "pointcloud" else nbody_recipe_data())
    for dotted, value in case.set.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return data


def write_case(case: Bad, folder: Path) -> Path:
    """The case's recipe path in ``folder`` (a FIFO, a directory, ... for the ``file`` cases)."""
    special = {"devzero": Path("/dev/zero"), "missing": folder / "missing.yaml"}
    if case.file in special:
        return special[case.file]
    path = folder / f"{case.file or 'recipe'}.yaml"
    if case.file == "fifo":
        os.mkfifo(path)
    elif case.file == "dir":
        path.mkdir()
    elif case.file == "big":
        path.write_text(yaml.safe_dump(nbody_recipe_data()) + "# padding\n" * (MAX_RECIPE_BYTES // 10 + 1))
    elif case.file == "binary":
        path.write_bytes(b"name: \xff\xfe\x00 tiny\n")
    elif case.text is not None:
        path.write_text(case.text)
    else:
        path.write_text(yaml.safe_dump(recipe_data(case), sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data cache for the whole corpus (each tiny data set is simulated once)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELAX_CACHE", str(folder))
        yield folder


def dry_run(path: Path, overrides: tuple[str, ...]) -> tuple[int, str]:
    """What ``relax train PATH OVERRIDES --dry-run`` does, in this process: (exit code, message). Any exception
    that is not a RelaxError escapes and fails the test (the CLI would print it as an unexpected error)."""
    from relaxcli.run.trainer import Trainer

    try:
        recipe = load_recipe(path, list(overrides))
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(recipe, Path(tmp), progress=False).dry_run()
    except RelaxError as exc:
        return exc.exit_code, str(exc)
    return 0, ""


def test_the_corpus_is_large_and_every_kind_runs_through_the_cli() -> None:
    assert len(CASES) >= 200
    assert len({case.id for case in CASES}) == len(CASES)
    assert len(CLI_CASES) >= 20
    kinds = {
        "optimizer-lr-'abc'",
        "model-hidden-irreps-int",
        "optimizer-lr-inf",
        "trainer-epochs-1e+30",
        "trainer-batch-larger-than-data",
        "model-num-layers-negative",
        "scheduler-t-max-zero",
        "symmetry-more-inputs",
        "data-train-0",
        "data-val-0",
        "seed-past-2-64",
        f"trainer-threads-{2**64}",
        "pointcloud-label-past-classes",
        "optimizer-component-print",
        "yaml-billion-laughs",
        "file-fifo",
        "runtime-branch-init-huge",
    }
    assert kinds <= {case.id for case in CLI_CASES}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_recipe_gets_a_clean_answer(
    case: Bad, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, message = dry_run(write_case(case, tmp_path), case.overrides)
    assert code == case.exit, f"{case.id}: exit {code}, expected {case.exit}: {message or 'accepted'}"
    assert case.key in message, f"{case.id}: {case.key!r} not in {message!r}"
    assert "Traceback" not in message and "\n" not in message.split(":", 1)[0]
    if case.exit == 2:
        assert message.count("\n  - ") >= 1  # a RecipeError: every problem on its own line


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CLI_CASES])
def test_bad_recipe_through_the_cli(case: Bad, cache: Path, tmp_path: Path, relax_cli: Callable[..., Any]) -> None:
    path = write_case(case, tmp_path)
    proc = relax_cli(
        "train",
        path,
        *case.overrides,
        "--dry-run",
        cwd=tmp_path,
        check=False,
        timeout=120,
        env={"RELAX_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == case.exit, f"{case.id}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("error: ") or "\nerror: " in proc.stderr, proc.stderr
    assert case.key in proc.stderr, f"{case.id}: {case.key!r} not in {proc.stderr!r}"
    assert "re-run with --debug" not in proc.stderr  # not an unexpected exception: a RelaxError


def test_cases_are_valid_without_their_change(cache: Path, tmp_path: Path) -> None:
    """The tiny recipes themselves pass the dry run, so each case fails for its own change."""
    for base in ("nbody", "pointcloud"):
        (tmp_path / base).mkdir()
        code, message = dry_run(write_case(Bad(f"valid-{base}", "", base=base), tmp_path / base), ())
        assert code == 0, message


if __name__ == "__main__":  # list the corpus
    for case in CASES:
        print(f"{case.id:50} exit {case.exit} {'cli ' if case.cli else '    '}{case.key}", file=sys.stdout)
