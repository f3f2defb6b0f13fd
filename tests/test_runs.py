"""mtbert.studio: reading runs (dead processes, stale locks), the trainer process started, refused,
stopped, resumed and failed for real, checkpoint paths, the form spec, the data files, charts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtbert import lock, runfolder
from mtbert.config import PRESET_FILES, TrainConfig, read_config_file
from mtbert.methods import METHODS
from mtbert.studio import charts, checkpoints, environment, runs, settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(d))
    yield d
    owner = lock.read_lock(d / ".lock")  # a trainer a failed test left behind must not outlive it
    if owner and owner.get("pid") != os.getpid():
        os.kill(owner["pid"], 9)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def fake_run(runs_dir: Path, name: str, state: str = "finished", pid: int | None = None,
             records: list[dict] | None = None, **status) -> Path:
    d = runs_dir / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TrainConfig(name=name).to_dict()))
    (d / "status.json").write_text(json.dumps({"run_id": name, "state": state, "pid": pid, **status}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records or []))
    return d


def step(i: int, conflicts: int = 1, projections: int = 2, **kw) -> dict:
    return {"type": "step", "step": i, "epoch": 0, "loss": {"sst": 1.6 - 0.1 * i, "para": 0.7, "sts": 2.0},
            "loss_total": 4.3 - 0.1 * i, "cos": {"sst/para": -0.1, "sst/sts": 0.2, "para/sts": 0.3},
            "conflicts": conflicts, "projections": projections, **kw}


def evaluation(i: int, split: str = "dev", average: float = 0.5, **kw) -> dict:
    return {"type": "eval", "split": split, "step": i, "sst_acc": 0.4, "para_acc": 0.7, "sts_corr": average,
            "average": average, **kw}


def wait_for(pred, timeout: float = 120, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ---- reading -----------------------------------------------------------------------------------

def test_a_running_run_whose_process_is_gone_reads_as_failed_with_its_log(runs_dir):
    d = fake_run(runs_dir, "crashed", state="running", pid=dead_pid())
    (d / "train.log").write_text("loading...\nSegmentation fault\n")
    st = runs.read_status(d)
    assert st["state"] == "failed"
    assert "ended without reporting why" in st["error"] and "Segmentation fault" in st["error"]
    alive = fake_run(runs_dir, "alive", state="running", pid=os.getpid())
    assert runs.read_status(alive)["state"] == "running"


def test_active_run_follows_the_lock_and_ignores_a_stale_one(runs_dir):
    fake_run(runs_dir, "old", state="running", pid=dead_pid())
    (runs_dir / ".lock").write_text(json.dumps({"pid": dead_pid(), "run_id": "old"}))
    assert runs.active_run() is None
    lock.acquire(runs_dir / ".lock", "now")  # the stale lock is taken over
    assert runs.active_run() == runs_dir / "now"


def test_list_runs_newest_first_and_describe_run(runs_dir):
    fake_run(runs_dir, "20260101-000000-a", records=[step(1), evaluation(1, average=0.6)])
    fake_run(runs_dir, "20260102-000000-b")
    (runs_dir / "not-a-run").mkdir()
    assert [p.name for p in runs.list_runs()] == ["20260102-000000-b", "20260101-000000-a"]
    row = runs.describe_run(runs_dir / "20260101-000000-a")
    assert row["state"] == "finished" and row["gradient_method"] == "sum" and row["Average"] == 0.6


def test_the_runs_table_shows_the_scores_first(runs_dir):
    """Right after the run's name come its scores, so they are in view without scrolling sideways;
    the settings follow."""
    fake_run(runs_dir, "20260101-000000-a", records=[step(1), evaluation(1, average=0.6)])
    row = runs.describe_run(runs_dir / "20260101-000000-a")
    assert list(row)[:5] == ["run", "Average", "Paraphrase acc", "SST acc", "STS corr"]
    assert list(row)[5:7] == ["state", "step"] and "gradient_method" in list(row)[7:]
    assert [row[k] for k in list(row)[1:5]] == [0.6, 0.7, 0.4, 0.6]


# ---- the seed's table ---------------------------------------------------------------------------

def test_results_rows_describe_the_best_dev_evaluation_and_its_train_row():
    recs = [evaluation(10, average=0.5), evaluation(10, "train", average=0.8),
            evaluation(20, average=0.7), evaluation(20, "train", average=0.9), evaluation(30, average=0.6)]
    rows = runs.results_rows(recs)
    assert [r[""] for r in rows] == ["Train", "Dev"]
    assert rows[1]["Average"] == 0.7 and rows[0]["Average"] == 0.9  # step 20 for both
    assert list(rows[0]) == ["", "Paraphrase acc", "SST acc", "STS corr", "Average"]
    # the trainer's final pass over the whole dev set wins over the subset evaluations
    assert runs.results_rows(recs + [evaluation(30, average=0.55, full=True)])[1]["Average"] == 0.55
    assert runs.results_rows([step(1)]) == []


def test_results_table_prefers_the_trainers_results_in_status(runs_dir):
    d = fake_run(runs_dir, "r", records=[evaluation(5, average=0.3)],
                 results={"dev": {"para_acc": 0.71, "sst_acc": 0.5, "sts_corr": 0.78, "average": 0.663},
                          "train": {"para_acc": 0.72, "sst_acc": 0.96, "sts_corr": 0.96, "average": 0.88}})
    rows = runs.results_table(d)
    assert rows == [{"": "Train", "Paraphrase acc": 0.72, "SST acc": 0.96, "STS corr": 0.96, "Average": 0.88},
                    {"": "Dev", "Paraphrase acc": 0.71, "SST acc": 0.5, "STS corr": 0.78, "Average": 0.663}]


# ---- refusing --------------------------------------------------------------------------------------

def test_start_is_refused_while_another_run_holds_the_lock(runs_dir):
    fake_run(runs_dir, "20260101-000000-busy", state="running", pid=os.getpid())
    lock.acquire(runs_dir / ".lock", "20260101-000000-busy")
    with pytest.raises(runs.LockHeld, match="20260101-000000-busy"):
        runs.start_run(TrainConfig().to_dict(), name="second")
    assert [p.name for p in runs.list_runs()] == ["20260101-000000-busy"]  # no folder for the refused one


def test_start_with_a_bad_setting_names_it_and_creates_nothing(runs_dir):
    with pytest.raises(ValueError, match="gradient_method.*pcgrad"):
        runs.start_run({**TrainConfig().to_dict(), "gradient_method": "magic"})
    with pytest.raises(ValueError, match="tasks"):
        runs.start_run({**TrainConfig().to_dict(), "tasks": []})
    assert runs.list_runs() == []


def test_delete_refuses_active_runs_and_folders_outside_the_runs_dir(runs_dir, tmp_path):
    live = fake_run(runs_dir, "live", state="running", pid=os.getpid())
    with pytest.raises(runs.RunError, match="active"):
        runs.delete_run(live)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.delete_run(outside)
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.delete_run(runs_dir / ".." / "precious")
    (runs_dir / "link").symlink_to(outside)
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.delete_run(runs_dir / "link")
    assert outside.is_dir()
    done = fake_run(runs_dir, "done")
    runs.delete_run(done)
    assert not done.exists() and live.exists()


def test_stop_refuses_a_run_that_is_not_running_or_a_pid_that_is_not_a_trainer(runs_dir):
    with pytest.raises(runs.RunError, match="not running"):
        runs.stop_run(fake_run(runs_dir, "done"))
    # a live PID that is not a trainer (this test process) must never be signalled
    with pytest.raises(runs.RunError, match="not its trainer"):
        runs.stop_run(fake_run(runs_dir, "recycled", state="running", pid=os.getpid()))


def test_resume_needs_a_saved_state(runs_dir):
    with pytest.raises(runs.RunError, match="no last/ checkpoint"):
        runs.resume_run(fake_run(runs_dir, "early", state="stopped"))


# ---- the trainer process, for real -------------------------------------------------------------

def tiny_config(base: Path, **kw) -> dict:
    return {**TrainConfig(base_model=str(base), epochs=1, batch_size=4, lr=1e-3, train_subset=400, eval_subset=8,
                          train_eval_subset=8, max_length=24, gradient_method="pcgrad", seed=3).to_dict(), **kw}


def test_start_refuse_stop_resume_a_real_run(runs_dir, tiny_base):
    d = runs.start_run(tiny_config(tiny_base), name="real")
    assert d.parent == runs_dir and d.name.endswith("-real")
    assert runs.active_run() == d  # held for the child from the moment it is spawned
    with pytest.raises(runs.LockHeld, match=d.name):
        runs.start_run(tiny_config(tiny_base), name="second")
    wait_for(lambda: runs.read_status(d).get("step", 0) >= 2, what="two steps")
    runs.stop_run(d)
    st = wait_for(lambda: (s := runs.read_status(d))["state"] != "running" and s, what="the stop")
    assert st["state"] == "stopped", st
    stopped_at = st["step"]
    assert (d / "last" / "trainer_state.json").is_file()
    wait_for(lambda: runs.active_run() is None, what="the lock's release")  # written after the status

    runs.resume_run(d)
    wait_for(lambda: runs.read_status(d).get("step", 0) > stopped_at, what="steps after the resume")
    runs.stop_run(d)
    st = wait_for(lambda: (s := runs.read_status(d))["state"] != "running" and s, what="the second stop")
    assert st["state"] == "stopped" and st["step"] > stopped_at
    recs, _ = runfolder.read_metrics(d)
    steps = [r["step"] for r in recs if r["type"] == "step"]
    assert steps == list(range(1, st["step"] + 1))  # one continuous run: no step lost or repeated
    assert "[resume]" in (d / "train.log").read_text()
    names = [c.name for c in checkpoints.list_checkpoints()]
    assert f"{d.name}/last" in names and names[-1] == "minilm-l6"


def test_a_run_that_fails_shows_its_error(runs_dir, tmp_path):
    d = runs.start_run(tiny_config(tmp_path / "no-such-model"), name="broken")
    st = wait_for(lambda: (s := runs.read_status(d))["state"] not in runs.LIVE_STATES and s, what="the failure")
    assert st["state"] == "failed"
    assert "no-such-model" in st["error"]
    wait_for(lambda: runs.active_run() is None, what="the lock's release")


# ---- checkpoint paths ------------------------------------------------------------------------------

def make_ckpt(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "mtbert.json").write_text("{}")
    (folder / "heads.safetensors").write_bytes(b"")
    return folder


def test_safe_checkpoint_path_only_inside_checkpoints_and_runs(runs_dir, tmp_path, monkeypatch):
    good = make_ckpt(runs_dir / "r1" / "best")
    assert checkpoints.safe_checkpoint_path(str(good)) == good.resolve()
    monkeypatch.chdir(runs_dir.parent)
    assert checkpoints.safe_checkpoint_path("runs/r1/best") == good.resolve()
    elsewhere = make_ckpt(tmp_path / "elsewhere")
    with pytest.raises(runs.RunError, match="no checkpoint there; allowed places"):
        checkpoints.safe_checkpoint_path(str(elsewhere))
    with pytest.raises(runs.RunError, match=r"'\.\.' is not allowed"):
        checkpoints.safe_checkpoint_path("runs/../elsewhere")
    with pytest.raises(runs.RunError, match="allowed places"):
        checkpoints.safe_checkpoint_path("/etc")
    (runs_dir / "sneaky").symlink_to(elsewhere)
    with pytest.raises(runs.RunError, match="allowed places"):
        checkpoints.safe_checkpoint_path(str(runs_dir / "sneaky"))
    inside = make_ckpt(runs_dir / "r2" / "best")
    (inside / "model.safetensors").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_text("x")
    with pytest.raises(runs.RunError, match="model.safetensors links outside"):
        checkpoints.safe_checkpoint_path(str(inside))
    with pytest.raises(runs.RunError, match="not a checkpoint folder"):
        checkpoints.safe_checkpoint_path(str(runs_dir / "r1"))
    with pytest.raises(runs.RunError, match="empty"):
        checkpoints.safe_checkpoint_path("  ")


# ---- the form, data and charts -------------------------------------------------------------------

def test_settings_spec_covers_every_trainer_setting_with_its_default():
    from dataclasses import fields

    spec = {s.name: s for s in settings.settings_spec()}
    assert set(spec) == {f.name for f in fields(TrainConfig)} - set(settings.NOT_IN_FORM)
    defaults = TrainConfig().to_dict()
    values = {name: s.from_widget(s.to_widget(s.default)) for name, s in spec.items()}
    assert values == {k: v for k, v in defaults.items() if k in spec}  # widget round trip is lossless
    assert spec["gradient_method"].kind == "choice" and spec["gradient_method"].choices == tuple(METHODS)
    assert spec["para_encoding"].kind == "choice" and spec["para_encoding"].optional
    assert spec["max_steps"].kind == "int" and spec["max_steps"].optional
    assert spec["bf16"].kind == "bool" and spec["tasks"].kind == "tasks"
    assert spec["tasks"].default == ["sst", "para", "sts"]  # as TrainConfig resolves "every task defined"
    assert spec["full_eval_at_s"].from_widget("60, 120") == [60.0, 120.0]
    assert spec["name"].from_widget("  x ") == "x"
    TrainConfig.from_dict({**values, **settings.preset_values("quick CPU demo")})  # a valid config


def test_preset_values_apply_the_preset_file_over_the_defaults():
    """A preset is its config file in configs/: the Train page and `--config FILE` read the same file."""
    for label, name in PRESET_FILES.items():
        from_file = read_config_file(REPO / "configs" / name)
        values = settings.preset_values(label)
        assert from_file and all(values[k] == v for k, v in from_file.items() if k not in settings.DATA_SETTINGS)
    quick = settings.preset_values("quick CPU demo")
    assert quick["time_budget_s"] <= 180 and quick["pooling"] == "mean"  # the demo fits in 3 minutes
    assert settings.preset_values("seed (CS224N report)")["pooling"] == TrainConfig().pooling == "cls"
    assert settings.preset_values(None)["epochs"] == TrainConfig().epochs
    with pytest.raises(ValueError, match="preset='nope' is not allowed; allowed values: quick CPU demo"):
        settings.preset_values("nope")


def test_a_broken_preset_file_names_the_setting(tmp_path, monkeypatch):
    import mtbert.config as C

    (tmp_path / "quick-demo.yaml").write_text("lr: 0.0001\ngradient_method: nope\n")
    monkeypatch.setattr(C, "CONFIGS_DIR", tmp_path)
    with pytest.raises(ValueError, match="gradient_method='nope' is not allowed; allowed values: sum, pcgrad"):
        settings.preset_values("quick CPU demo")


def test_describe_data_counts_rows_and_flags_missing_files(tmp_path):
    from mtbert.data import SAMPLE_DIR

    rows = environment.describe_data(SAMPLE_DIR)
    train = {r["task"]: r for r in rows if r["split"] == "train"}
    assert set(train) == {"sst", "para", "sts"} and all(r["usable"] > 0 for r in train.values())
    assert environment.data_problem(rows, ["sst", "para", "sts"]) is None
    (tmp_path / "ids-sst-train.csv").write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t3\n")
    rows = environment.describe_data(tmp_path)
    assert next(r for r in rows if r["file"] == "ids-sst-train.csv")["usable"] == 1
    assert "train: sst 1, para missing" in environment.data_summary(rows)
    assert environment.data_problem(rows, ["sst"]) == ("no usable data in: dev sst (ids-sst-dev.csv); `python -m "
                                                       "mtbert data fetch --dest DIR` fetches the official CS224N files")


def test_task_weight_charts_carry_each_steps_weights():
    recs = [{**step(i), "task_weights": {"sst": 1.0, "para": 1.0 + i / 10}} for i in range(1, 5)]
    live = {t.name: list(t.y) for t in charts.weights_figure(recs).data}
    assert live["para raw"] == pytest.approx([1.1, 1.2, 1.3, 1.4]) and live["sst raw"] == [1.0] * 4
    assert live["para smoothed"][0] == pytest.approx(1.1)
    over = {t.name: t for t in charts.overlay_figure({"a": recs, "b": recs[:2]}, "weights").data}
    assert sorted(over) == ["a · para", "a · sst", "b · para", "b · sst"]
    assert list(over["b · para"].x) == [1, 2] and over["a · sst"].line.color == over["a · para"].line.color
    assert over["a · sst"].line.dash != over["a · para"].line.dash
    assert charts.weights_figure([step(1)]).data == ()  # a run recorded before task weights: no lines


def test_progress_line():
    frac, text = runs.progress({"state": "running", "step": 30, "total_steps": 120, "epoch": 0, "epochs": 2,
                                "eta_s": 95.0, "examples_per_s": 41.27})
    assert frac == 0.25 and text == "step 30/120 · epoch 1/2 · ETA 1:35 · 41.3 examples/s"
    assert runs.progress({"state": "queued"}) == (0.0, "step 0/?")


def test_charts_carry_the_runs_numbers():
    recs = [step(i, conflicts=i % 2, projections=2 * (i % 2)) for i in range(1, 5)] + [evaluation(4, average=0.6)]
    loss = charts.loss_figure(recs)
    by_name = {t.name: t for t in loss.data}
    assert list(by_name["sst raw"].y) == pytest.approx([1.5, 1.4, 1.3, 1.2])
    assert by_name["sst smoothed"].y[0] == pytest.approx(1.5)  # bias-corrected EMA starts at the first value
    pc = {t.name: t for t in charts.pcgrad_figure(recs).data}
    assert list(pc["conflicting pairs"].y) == [1, 0, 1, 0]
    assert list(pc["conflicts, running total"].y) == [1, 1, 2, 2]
    assert list(pc["projections, running total"].y) == [2, 2, 4, 4]
    cos = {t.name: list(t.y) for t in charts.cosine_figure(recs).data}
    assert cos["sst/para"] == [-0.1] * 4
    dev = {t.name: list(t.y) for t in charts.dev_figure(recs).data}
    assert dev["Average"] == [0.6]
    over = charts.overlay_figure({"a": recs, "b": recs[:2]}, "loss")
    assert [len(t.x) for t in over.data] == [4, 2]
    with pytest.raises(ValueError, match="kind='x' is not allowed"):
        charts.overlay_figure({}, "x")
    many = [step(i) for i in range(1, 5001)]
    assert len(charts.loss_figure(many).data[0].x) <= charts.MAX_POINTS  # thinned for the browser


def test_dev_chart_never_joins_a_subset_and_a_full_dev_evaluation():
    """A subset evaluation and a full-dev one at the same step (the final pass, a full_eval_at_s
    mark) are different measurements: no line runs through both."""
    during = [evaluation(i, average=0.5 + 0.01 * i, full=False, examples={"sst": 100}) for i in (2, 4, 6)]
    full = [evaluation(i, average=avg, sst_acc=0.45, para_acc=0.75, full=True, examples={"sst": 1101})
            for i, avg in ((4, 0.9), (6, 0.8))]
    recs = [step(1), *during, step(5), *full]
    values = [{v for r in evals for v in r.values() if isinstance(v, float)} for evals in (during, full)]
    assert not values[0] & values[1]  # every point tells which kind of evaluation it came from
    for fig, name in ((charts.dev_figure(recs), "Average"), (charts.overlay_figure({"run-a": recs}, "dev"), "run-a")):
        traces = {t.name: t for t in fig.data}
        line, stars = traces[name], traces[f"{name} (full dev set)"]
        assert list(zip(line.x, line.y)) == [(2, 0.52), (4, 0.54), (6, 0.56)] and "lines" in line.mode
        assert list(zip(stars.x, stars.y)) == [(4, 0.9), (6, 0.8)] and stars.mode == "markers"
        assert stars.marker.color == line.line.color  # one score, one colour
        for t in fig.data:
            assert set(t.y) <= values[0] or set(t.y) <= values[1], f"{t.name} mixes subset and full-dev points"
    assert len(charts.dev_figure(recs).data) == 8  # 4 scores, each a line and its full-dev stars


def test_ema_matches_its_definition():
    assert charts.ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    s1 = 0.1 * 1.0
    s2 = 0.9 * s1 + 0.1 * 3.0
    assert charts.ema([1.0, 3.0]) == pytest.approx([1.0, s2 / (1 - 0.81)])
