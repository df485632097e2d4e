import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from relaxcli.run.reports import flatten_record, summarize, write_csv, write_plots
from relaxcli.run.runlog import MetricsLog

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SITES = ("layers.0.tp", "layers.1.tp", "head.lin")


def relaxed_records(n_steps: int = 40, eval_every: int = 10, gamma: bool = True) -> list[dict]:
    records: list[dict] = []
    for step in range(n_steps):
        theta = max(0.0, 1.0 - step / (n_steps - 1))
        records.append(
            {
                "kind": "train",
                "step": step,
                "epoch": step // 10,
                "loss": 2.0 / (step + 1) + 0.1,
                "task": 2.0 / (step + 1),
                "reg": 0.1,
                "projection": 0.05,
                "lie": 0.03,
                "discrete": 0.02,
                "theta": theta,
                "lr": 1e-3,
                "time": 0.01 * step,
            }
        )
        if step % eval_every == eval_every - 1:
            sites = {
                s: {"theta": theta, "weight_norm": 1.0 + i, "lie": (i + 1) * 1e-2 * theta + 1e-6, "discrete": 0.0}
                for i, s in enumerate(SITES)
            }
            if gamma:
                for i, s in enumerate(SITES):
                    sites[s]["gamma"] = 0.5 + 0.1 * i
            records.append(
                {
                    "kind": "eval",
                    "step": step,
                    "epoch": step // 10,
                    "val_projected": 1.0 / (step + 1),
                    "val_relaxed": 0.9 / (step + 1),
                    "theta": theta,
                    "best": True,
                    "sites": sites,
                }
            )
    records.append(
        {
            "kind": "test",
            "step": n_steps - 1,
            "epoch": 3,
            "val_projected": 0.03,
            "test_projected": 0.031,
            "test_relaxed": 0.029,
        }
    )
    return records


def standard_records(n_steps: int = 30) -> list[dict]:
    records: list[dict] = []
    for step in range(n_steps):
        records.append(
            {
                "kind": "train",
                "step": step,
                "epoch": 0,
                "loss": 1.0 / (step + 1),
                "task": 1.0 / (step + 1),
                "lr": 1e-3,
                "time": 0.0,
                "theta": None,
            }
        )
        if step % 10 == 9:
            records.append(
                {
                    "kind": "eval",
                    "step": step,
                    "epoch": 0,
                    "val_projected": 0.5 / (step + 1),
                    "val_relaxed": None,
                    "theta": None,
                    "best": True,
                    "sites": {},
                }
            )
    records.append(
        {
            "kind": "test",
            "step": n_steps - 1,
            "epoch": 0,
            "val_projected": 0.02,
            "test_projected": 0.021,
            "test_relaxed": None,
        }
    )
    return records


# --------------------------------------------------------------------------------------------------- the log


def test_append_read_round_trip_with_non_finite_as_null(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    log = MetricsLog(path)
    first = {"kind": "train", "step": 0, "loss": float("nan"), "task": 1.5, "theta": float("inf"), "reg": None}
    second = {
        "kind": "eval",
        "step": 1,
        "val_projected": 0.25,
        "best": True,
        "sites": {"a.b": {"lie": float("-inf"), "theta": 0.5}},
    }
    log.append(first)
    log.append(second)

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    records = MetricsLog.read(path)
    assert records == [  # each null that was a number says why
        {
            "kind": "train",
            "step": 0,
            "loss": None,
            "task": 1.5,
            "theta": None,
            "reg": None,
            "null_reasons": {"loss": "not finite: nan", "theta": "not finite: inf"},
        },
        {
            "kind": "eval",
            "step": 1,
            "val_projected": 0.25,
            "best": True,
            "sites": {"a.b": {"lie": None, "theta": 0.5}},
            "null_reasons": {"sites/a.b/lie": "not finite: -inf"},
        },
    ]
    assert MetricsLog.count_lines(path) == 2
    assert MetricsLog.read(tmp_path / "missing.jsonl") == []


def test_numpy_and_torch_scalars_are_written_as_numbers(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    log = MetricsLog(tmp_path / "m.jsonl")
    log.append({"a": np.float32(0.5), "b": torch.tensor(2.0), "c": np.float64("nan"), "d": np.int64(3)})
    assert MetricsLog.read(log.path) == [
        {"a": 0.5, "b": 2.0, "c": None, "d": 3, "null_reasons": {"c": "not finite: nan"}}
    ]


def test_truncated_last_line_is_skipped_and_repaired_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(3):
        log.append({"kind": "train", "step": step, "loss": 1.0})
    with open(path, "a") as f:  # a kill -9 halfway through writing line 4
        f.write('{"kind": "train", "step": 3, "lo')
    assert [r["step"] for r in MetricsLog.read(path)] == [0, 1, 2]
    assert MetricsLog.count_lines(path) == 3

    MetricsLog(path).append({"kind": "train", "step": 3, "loss": 0.5})  # resuming must not glue onto the fragment
    assert [r["step"] for r in MetricsLog.read(path)] == [0, 1, 2, 3]
    assert path.read_text().count("\n") == 4


def test_corrupt_line_in_the_middle_raises(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": \n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        MetricsLog.read(path)


@pytest.mark.parametrize("n", [0, 1, 4, 7])
def test_truncate_keeps_exactly_the_first_n_lines(tmp_path: Path, n: int) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(7):
        log.append({"kind": "train", "step": step})
    assert MetricsLog.truncate(path, n) == n
    assert MetricsLog.count_lines(path) == n
    assert [r["step"] for r in MetricsLog.read(path)] == list(range(n))
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.jsonl"]  # no temp files left behind

    log.append({"kind": "train", "step": 100})  # the same log object keeps appending to the new file
    assert [r["step"] for r in MetricsLog.read(path)] == [*range(n), 100]


def test_truncate_with_fewer_lines_keeps_them_all(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).append({"step": 0})
    assert MetricsLog.truncate(path, 5) == 1
    assert MetricsLog.truncate(tmp_path / "missing.jsonl", 3) == 0
    with pytest.raises(ValueError):
        MetricsLog.truncate(path, -1)


# --------------------------------------------------------------------------------------------------- CSV


def test_csv_columns_and_values(tmp_path: Path) -> None:
    records = [
        {"kind": "train", "step": 0, "loss": 1.25, "theta": None},
        {
            "kind": "eval",
            "step": 5,
            "val_projected": 0.5,
            "best": True,
            "sites": {"layers.0.tp": {"theta": 0.3, "lie": 1e-3}, "layers.1.tp": {"theta": 0.2, "gamma": 0.7}},
        },
        {"kind": "test", "step": 5, "test_projected": float("nan"), "extra": [1, 2]},
    ]
    path = write_csv(records, tmp_path / "out" / "metrics.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    assert columns == [
        "kind",
        "step",
        "loss",
        "theta",
        "val_projected",
        "best",
        "site/layers.0.tp/theta",
        "site/layers.0.tp/lie",
        "site/layers.1.tp/theta",
        "site/layers.1.tp/gamma",
        "test_projected",
        "extra",
    ]
    assert len(rows) == 3
    assert rows[0]["kind"] == "train" and float(rows[0]["loss"]) == 1.25 and rows[0]["theta"] == ""
    assert rows[0]["site/layers.0.tp/lie"] == ""
    assert rows[1]["best"] == "True" and float(rows[1]["site/layers.0.tp/lie"]) == 1e-3
    assert float(rows[1]["site/layers.1.tp/gamma"]) == 0.7 and rows[1]["loss"] == ""
    assert rows[2]["test_projected"] == "" and json.loads(rows[2]["extra"]) == [1, 2]


def test_flatten_record_handles_other_nested_mappings() -> None:
    flat = flatten_record({"step": 1, "sites": {}, "dual": {"a": 1.0, "b": {"c": 2}}})
    assert flat == {"step": 1, "dual/a": 1.0, "dual/b/c": 2}


# --------------------------------------------------------------------------------------------------- plots


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5_000, (path, len(data))


def test_plots_for_a_relaxed_run(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    written = write_plots(relaxed_records(), out)
    assert [p.name for p in written] == ["loss.png", "theta.png", "lie.png"]
    assert sorted(p.name for p in out.iterdir()) == ["lie.png", "loss.png", "theta.png"]  # no temp files
    for path in written:
        _assert_png(path)


def test_plots_for_a_standard_run_skip_theta_and_lie(tmp_path: Path) -> None:
    written = write_plots(standard_records(), tmp_path)
    assert [p.name for p in written] == ["loss.png"]
    _assert_png(tmp_path / "loss.png")
    assert not (tmp_path / "theta.png").exists()
    assert not (tmp_path / "lie.png").exists()


def test_plots_with_many_sites_and_no_gamma(tmp_path: Path) -> None:
    records = relaxed_records(gamma=False)
    for r in records:
        if r["kind"] == "eval":
            r["sites"] = {f"layers.{i}.tp": {"lie": 1e-3 * (i + 1), "theta": 0.1} for i in range(14)}
    written = write_plots(records, tmp_path)
    assert [p.name for p in written] == ["loss.png", "theta.png", "lie.png"]
    for path in written:
        _assert_png(path)


def test_plots_of_empty_records_write_nothing(tmp_path: Path) -> None:
    assert write_plots([], tmp_path / "p") == []
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_plots_do_not_import_pyplot(tmp_path: Path) -> None:
    # In a fresh interpreter: the reports need neither pyplot nor torch.
    records = tmp_path / "records.json"
    records.write_text(json.dumps(relaxed_records()))
    code = (
        "import json, pathlib, sys\n"
        "import relaxcli.run.reports as m\n"
        f"records = json.loads(pathlib.Path({str(records)!r}).read_text())\n"
        f"assert len(m.write_plots(records, pathlib.Path({str(tmp_path)!r}))) == 3\n"
        "assert 'matplotlib.pyplot' not in sys.modules and 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------------- summary


def test_summarize_relaxed_run() -> None:
    records = relaxed_records()
    # A worse eval later on must not be picked, and a NaN-turned-null one is ignored.
    records.append(
        {"kind": "eval", "step": 45, "val_projected": 0.9, "val_relaxed": 0.8, "theta": 0.0, "best": False, "sites": {}}
    )
    records.append(
        {
            "kind": "eval",
            "step": 46,
            "val_projected": None,
            "val_relaxed": None,
            "theta": 0.0,
            "best": False,
            "sites": {},
        }
    )
    s = summarize(records)
    assert s["best_eval"]["step"] == 39
    assert math.isclose(s["best_eval"]["val_projected"], 1.0 / 40)
    assert s["test"]["test_projected"] == 0.031
    assert s["final_theta"] == 0.0
    assert s["last_step"] == 46
    assert s["counts"] == {"train": 40, "eval": 6, "test": 1}


def test_summarize_standard_run_and_empty() -> None:
    s = summarize(standard_records())
    assert s["final_theta"] is None
    assert s["best_eval"]["step"] == 29 and s["test"]["test_relaxed"] is None
    empty = summarize([])
    assert empty["best_eval"] is None and empty["test"] is None and empty["final_theta"] is None
    assert empty["last_step"] is None
