"""Tests for relaxcli.recipe: loading, validation messages, overrides, round trips, instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relaxcli.errors import RecipeError
from relaxcli.recipe import (
    ComponentSpec,
    RelaxConfig,
    TrainerConfig,
    dump_recipe,
    instantiate,
    load_recipe,
    loads_recipe,
    recipe_from_dict,
)

VALID = """\
name: tiny
model:
  _component_: torch.nn.Linear
  in_features: 3
  out_features: 2
data:
  _component_: torch.nn.Identity
optimizer:
  _component_: torch.optim.Adam
  lr: 1e-3
trainer:
  epochs: 3
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(excinfo: pytest.ExceptionInfo[RecipeError]) -> list[str]:
    return excinfo.value.problems


def test_valid_recipe_loads_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    r = load_recipe(path)
    assert r.name == "tiny" and r.seed is None and r.source == str(path)
    assert r.model == ComponentSpec("torch.nn.Linear", {"in_features": 3, "out_features": 2}, None, "model")
    assert r.optimizer.kwargs == {"lr": 1e-3} and isinstance(r.optimizer.kwargs["lr"], float)  # 1e-3 is a float
    assert r.loss.target == "torch.nn.MSELoss" and r.loss.kwargs == {}
    assert r.scheduler is None and r.symmetry is None
    assert r.trainer == TrainerConfig(epochs=3)
    assert r.trainer.batch_size == 32 and r.trainer.device == "auto" and r.trainer.dtype == "float32"
    assert r.relax == RelaxConfig()
    assert r.relax.include == ["*"] and r.relax.exclude == []
    assert r.relax.branch.init_std == 1e-4
    reg, theta = r.relax.regularizer, r.relax.theta
    assert (reg.weight, reg.source, reg.rows) == (0.01, "data", 256)
    assert reg.projection is True and reg.lie is True and reg.discrete is True
    assert (theta.schedule, theta.max, theta.granularity, theta.end) == ("triangle", 1.0, "step", 1.0)


def test_dump_load_round_trip(tmp_path: Path) -> None:
    text = VALID + "symmetry:\n  inputs: [1x1o, cartesian_points, null]\n  output: 16x0e+16x1o\n"
    text += "scheduler:\n  _component_: torch.optim.lr_scheduler.StepLR\n  step_size: 2\n"
    r = load_recipe(write(tmp_path, text), ["relax.exclude=[head.*]", "seed=7"])
    dumped = dump_recipe(r)
    keys = ["name", "seed", "model", "data", "loss", "optimizer", "scheduler", "trainer", "collate", "forward"]
    keys += ["relax", "symmetry"]
    assert list(r.to_dict()) == keys
    assert "  schedule: triangle\n" in dumped and "seed: 7\n" in dumped
    again = load_recipe(write(tmp_path, dumped, "resolved.yaml"))
    assert again == r
    assert again.symmetry is not None and again.symmetry.inputs == ["1x1o", "cartesian_points", None]
    assert recipe_from_dict(r.to_dict()) == r
    assert dump_recipe(again) == dumped


def test_string_that_looks_like_a_float_survives_round_trip(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, VALID.replace("  out_features: 2\n", "  out_features: 2\n  device: '1e-3'\n")))
    assert r.model.kwargs["device"] == "1e-3"
    assert loads_recipe(dump_recipe(r)).model.kwargs["device"] == "1e-3"


def test_overrides_change_values(tmp_path: Path) -> None:
    r = load_recipe(
        write(tmp_path, VALID),
        [
            "trainer.epochs=5",
            "relax.theta.schedule=constant",
            "trainer.grad_clip=1",  # int accepted for a float
            "model.bias=false",  # new kwarg in a component: checked against the signature
            "relax.include=[encoder.*, head]",
            "trainer.max_steps=null",
            "scheduler._component_=torch.optim.lr_scheduler.StepLR",
            "scheduler.step_size=4",
        ],
    )
    assert r.trainer.epochs == 5
    assert r.relax.theta.schedule == "constant"
    assert r.trainer.grad_clip == 1.0 and isinstance(r.trainer.grad_clip, float)
    assert r.model.kwargs == {"in_features": 3, "out_features": 2, "bias": False}
    assert r.relax.include == ["encoder.*", "head"]
    assert r.scheduler == ComponentSpec("torch.optim.lr_scheduler.StepLR", {"step_size": 4}, None, "scheduler")


def test_override_problems(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(
            write(tmp_path, VALID),
            [
                "trainer.epcohs=5",
                "trainer.batch_size=big",
                "relax.theta.schedule=cosin",
                "model.biass=false",
                "oops",
                "name.x=1",
            ],
        )
    assert problems_of(excinfo) == [
        "override 'trainer.epcohs=5': trainer.epcohs: unknown key; did you mean 'epochs'?",
        "override 'trainer.batch_size=big': trainer.batch_size: expected an integer, got 'big' (str)",
        "override 'relax.theta.schedule=cosin': relax.theta.schedule: must be one of "
        "'triangle', 'constant', 'linear', 'cosine', 'ace', 'ace_elastic'; got 'cosin' (str); did you mean 'cosine'?",
        "override 'model.biass=false': model.biass: unknown argument of torch.nn.Linear; did you mean 'bias'?",
        "override 'oops': expected KEY=VALUE, e.g. trainer.epochs=5",
        "override 'name.x=1': name is 'tiny' (str), not a mapping",
    ]
    assert excinfo.value.exit_code == 2


def test_theta_keys_must_fit_the_schedule(tmp_path: Path) -> None:
    text = VALID + "relax:\n  theta:\n    schedule: ace_elastic\n    rho: 2.0\n    dual_lr: 0.05\n    max: 1.0\n"
    theta = load_recipe(write(tmp_path, text)).relax.theta  # max at its default value is harmless
    assert (theta.schedule, theta.rho, theta.dual_lr, theta.gamma_lr) == ("ace_elastic", 2.0, 0.05, None)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(write(tmp_path, text), ["relax.theta.schedule=ace", "relax.theta.end=0.5"])
    path = tmp_path / "recipe.yaml"
    assert problems_of(excinfo) == [
        f"{path}:16: relax.theta.rho: is not used by schedule 'ace'; it applies to ace_elastic only",
        "override 'relax.theta.end=0.5': relax.theta.end: is not used by schedule 'ace'; it applies to triangle, "
        "constant, linear, cosine only",
    ]
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(write(tmp_path, VALID), ["relax.theta.dual_lr=0", "relax.theta.gamma_lr=1e-3"])
    assert problems_of(excinfo) == ["override 'relax.theta.dual_lr=0': relax.theta.dual_lr: must be > 0, got 0"]


def test_override_replacing_a_section_owns_its_problems(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(write(tmp_path, VALID), ["trainer={batch_size: 4}", "symmetry.output=1x1o", "+seed=1"])
    assert problems_of(excinfo) == [
        "override 'trainer={batch_size: 4}': trainer.epochs: missing required key",
        "override 'symmetry.output=1x1o': symmetry.inputs: missing required key",
        "override '+seed=1': invalid key '+seed'; '+key' and '~key' are not supported: set the key directly",
    ]


BAD = """\
name: tiny
model:
  _component_: torch.nn.Linear
  in_features: 3
  out_features: 2
data:
  _component_: torch.nn.Identiti
optimizer:
  _component_: torch.optim.Adam
  lrr: 0.01
trainer:
  epochs: ten
  devcie: cpu
  dtype: float16
relax:
  enabled: "False"
  theta:
    shedule: constant
    end: 0
symmetry:
  inputs: [1x1o, 16x0e+16xo]
  output: 1x1o
"""


def test_bad_recipe_lists_every_problem_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    p = str(path)
    assert problems_of(excinfo) == [
        f"{p}:7: data._component_: cannot import torch.nn.Identiti: "
        "'torch.nn' has no attribute 'Identiti'; did you mean 'Identity'?",
        f"{p}:10: optimizer.lrr: unknown argument of torch.optim.Adam; did you mean 'lr'?",
        f"{p}:12: trainer.epochs: expected an integer, got 'ten' (str)",
        f"{p}:13: trainer.devcie: unknown key; did you mean 'device'?",
        f"{p}:14: trainer.dtype: must be one of 'float32', 'float64'; got 'float16' (str); did you mean 'float64'?",
        f"{p}:16: relax.enabled: expected true or false, got 'False' (str); write true or false without quotes",
        f"{p}:18: relax.theta.shedule: unknown key; did you mean 'schedule'?",
        f"{p}:19: relax.theta.end: must be > 0 and <= 1, got 0",
        f"{p}:21: symmetry.inputs[1]: invalid Irreps '16x0e+16xo'; "
        "expected e.g. '1x1o' or '16x0e+16x1o', or 'cartesian_points'",
    ]
    message = str(excinfo.value)
    assert message.startswith(f"{p} has 9 problems:\n  - {p}:7: ")
    assert excinfo.value.source == p


def test_more_component_problems(tmp_path: Path) -> None:
    text = VALID.replace("  out_features: 2\n", "").replace("  lr: 1e-3\n", "  lr: 1e-3\n  params: []\n")
    text += "scheduler:\n  _component_: torch.optim.lr_scheduler.StepLR\nloss: torch.nn.MSELoss\n"
    text += "seed: -1\nnme: x\n"
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    p = str(path)
    assert problems_of(excinfo) == [
        f"{p}:2: model.out_features: missing required argument of torch.nn.Linear",
        f"{p}:10: optimizer.params: is supplied by the trainer (the model parameters); remove it",
        f"{p}:13: scheduler.step_size: missing required argument of torch.optim.lr_scheduler.StepLR",
        f"{p}:15: loss: expected a mapping with '_component_', got 'torch.nn.MSELoss' (str)",
        f"{p}:16: seed: must be >= 0, got -1",
        f"{p}:17: nme: unknown key; did you mean 'name'?",
    ]


def test_unimportable_module_and_duplicate_key(tmp_path: Path) -> None:
    text = VALID.replace("torch.nn.Identity", "no_such_pkg.data.Thing") + "trainer:\n  epochs: 4\n"
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    p = str(path)
    assert problems_of(excinfo) == [
        f"{p}:7: data._component_: cannot import no_such_pkg.data.Thing: no module named 'no_such_pkg'",
        f"{p}:13: trainer: duplicate key (first on line 11); YAML keeps the last one",
    ]


def test_missing_required_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 1\ntrainer:\n  batch_size: 4\nmodel:\n  in_features: 3\n")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    p = str(path)
    assert problems_of(excinfo) == [
        f"{p}:2: trainer.epochs: missing required key",
        f"{p}:4: model._component_: missing required key",
        f"{p}: name: missing required key",
        f"{p}: data: missing required key",
        f"{p}: optimizer: missing required key",
    ]


def test_missing_file_directory_empty_and_invalid_yaml(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(missing)
    assert problems_of(excinfo) == [f"{missing}: file not found"]

    with pytest.raises(RecipeError) as excinfo:
        load_recipe(tmp_path)
    assert problems_of(excinfo) == [f"{tmp_path}: is a directory; expected a YAML recipe file"]

    empty = write(tmp_path, "# nothing here\n", "empty.yaml")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(empty)
    needs = "name, model, data, optimizer and trainer"
    assert problems_of(excinfo) == [f"{empty}: the recipe is empty; it needs at least {needs}"]

    broken = write(tmp_path, "name: x\nmodel:\n  a: 1\n b: 2\n", "broken.yaml")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(broken)
    (problem,) = problems_of(excinfo)
    assert problem.startswith(f"{broken}:4: invalid YAML: ")

    listed = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(listed)
    assert problems_of(excinfo) == [f"{listed}:1: the recipe must be a mapping of sections, got ['a', 'b'] (list)"]


def test_from_dict_validates(tmp_path: Path) -> None:
    d = load_recipe(write(tmp_path, VALID)).to_dict()
    d["trainer"]["epochs"] = 0
    d["relax"]["regularizer"]["lie"] = "yes"
    with pytest.raises(RecipeError) as excinfo:
        recipe_from_dict(d)
    assert problems_of(excinfo) == [
        "<checkpoint>: trainer.epochs: must be >= 1, got 0",
        "<checkpoint>: relax.regularizer.lie: expected true or false, got 'yes' (str); "
        "write true or false without quotes",
    ]


def test_weights_resolve_against_recipe_dir(tmp_path: Path) -> None:
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "init.safetensors").write_bytes(b"")
    text = VALID.replace("  in_features: 3\n", "  _weights_: init.safetensors\n  in_features: 3\n")
    r = load_recipe(write(sub, text))
    assert r.model.weights == str(sub / "init.safetensors")
    assert load_recipe(write(tmp_path, dump_recipe(r), "copy.yaml")) == r

    path = write(sub, text.replace("init.safetensors", "missing.safetensors"), "bad.yaml")
    with pytest.raises(RecipeError) as excinfo:
        load_recipe(path)
    assert problems_of(excinfo) == [f"{path}:4: model._weights_: file not found: {sub / 'missing.safetensors'}"]


def test_instantiate_and_wrapped_errors(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, VALID))
    model = instantiate(r.model)
    assert isinstance(model, torch.nn.Linear) and model.in_features == 3 and model.out_features == 2
    optimizer = instantiate(r.optimizer, model.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-3
    assert instantiate(r.model, bias=False).bias is None  # extra kwargs are passed (and win)
    assert r.model.kwargs == {"in_features": 3, "out_features": 2}  # ...without touching the recipe

    bad = ComponentSpec("torch.nn.Linear", {"in_features": -3, "out_features": 2}, section="model")
    with pytest.raises(RecipeError) as excinfo:
        instantiate(bad)
    (problem,) = problems_of(excinfo)
    assert problem.startswith("model: torch.nn.Linear(...) failed: ")
    assert "negative dimension" in problem
    assert isinstance(excinfo.value.__cause__, RuntimeError)
