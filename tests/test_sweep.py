"""mtbert.sweep and `python -m mtbert sweep`: the plan and its validation, a real 2x2 sweep of tiny runs
whose table is the runs' own numbers, a kill and --resume that runs nothing twice, the machine lock,
and a Slurm array script run index by index without Slurm, then collected."""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from mtbert import cli, lock, runfolder, sweep
from mtbert.config import TrainConfig
from test_runs import wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MTBERT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MTBERT_SWEEPS_DIR", str(tmp_path / "sweeps"))
    return tmp_path


def base_file(tmp_path: Path, base: Path, **kw) -> Path:
    settings = {**dict(base_model=str(base), epochs=1, batch_size=4, lr=1e-3, train_subset=16, max_steps=2,
                       eval_subset=8, train_eval_subset=8, max_length=24, final_full_eval=False, seed=5), **kw}
    path = tmp_path / "base.json"
    path.write_text(json.dumps(settings))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH")) if p)
    return e


def mtbert(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtbert", *args], capture_output=True, text=True, env=env(),
                          timeout=300, **kw)


def steps_of(run_dir: Path) -> list[int]:
    return [r["step"] for r in runfolder.read_metrics(run_dir)[0] if r.get("type") == "step"]


def check_table(sweep_dir: Path, res: dict) -> None:
    """Each variant's cells are the mean and sd of its runs' own best/metrics.json dev scores."""
    doc = sweep.load(sweep_dir)
    assert [c["key"] for c in res["columns"]] == ["para_acc", "sst_acc", "sts_corr", "average"]
    for row in res["rows"]:
        runs = [r for r in doc["runs"] if r["variant"] == row["variant"]]
        devs = [json.loads((sweep_dir / r["run_dir"] / "best" / "metrics.json").read_text())["dev"] for r in runs]
        assert row["seeds"] == len(runs) == 2
        for key in ("para_acc", "sst_acc", "sts_corr", "average"):
            values = [d[key] for d in devs]
            assert row["metrics"][key]["mean"] == pytest.approx(statistics.mean(values))
            assert row["metrics"][key]["sd"] == pytest.approx(statistics.stdev(values))
        medians = [statistics.median(r["step_time"] for r in runfolder.read_metrics(sweep_dir / x["run_dir"])[0]
                                     if r.get("type") == "step") for x in runs]
        assert row["step_time_s"] == pytest.approx(statistics.mean(medians))


# ---- planning and validation ---------------------------------------------------------------------

def test_the_plan_is_the_product_of_the_lists_times_the_seeds():
    runs = sweep.plan({"seed": 100, "max_steps": 3},
                      sweep.parse_vary(["gradient_method=sum,pcgrad", "lr=1e-5,2e-5", "tasks=sst+sts,sst"]), 3)
    assert len(runs) == 2 * 2 * 2 * 3
    assert [r["seed"] for r in runs[:4]] == [100, 101, 102, 100]
    assert runs[0]["variant"] == {"gradient_method": "sum", "lr": 1e-5, "tasks": ["sst", "sts"]}
    assert runs[-1]["variant"] == {"gradient_method": "pcgrad", "lr": 2e-5, "tasks": ["sst"]}
    last = runs[-1]["config"]
    assert (last["gradient_method"], last["lr"], last["tasks"], last["seed"], last["max_steps"]) == \
        ("pcgrad", 2e-5, ["sst"], 102, 3)
    assert len({r["label"] for r in runs}) == len(runs)  # one folder each


def test_relative_paths_are_made_absolute_for_runs_that_start_elsewhere(dirs, monkeypatch, tiny_base):
    monkeypatch.chdir(tiny_base.parent)
    [run] = sweep.plan({"base_model": tiny_base.name, "data_dir": "no-such-folder"}, {}, 1)
    assert run["config"]["base_model"] == str(tiny_base) and run["config"]["data_dir"] == "no-such-folder"


@pytest.mark.parametrize("vary, said", [
    ("gradient_methd=sum", "unknown setting 'gradient_methd' (did you mean gradient_method?)"),
    ("gradient_method=sum,nope", "setting gradient_method='nope' is not allowed; allowed values: sum, pcgrad"),
    ("lr=fast", "setting lr='fast' is not allowed; allowed values: a number > 0"),
    ("max_steps=0", "setting max_steps=0 is not allowed; allowed values: none or an integer >= 1"),
    ("seed=1,2", "setting seed cannot be varied (use --seeds"),
    ("lr", "expected SETTING=VALUE,VALUE"),
])
def test_a_bad_vary_names_the_setting_and_its_allowed_values_and_creates_nothing(dirs, capsys, vary, said):
    cfg = base_file(dirs, dirs / "no-model")
    assert cli.main(["sweep", "--config", str(cfg), "--vary", vary]) == 1
    assert said in capsys.readouterr().err
    assert not (dirs / "sweeps").exists()


def test_bad_seeds_or_parallel_are_refused_before_a_folder_is_written(dirs, capsys):
    cfg = str(base_file(dirs, dirs / "m"))
    assert cli.main(["sweep", "--config", cfg, "--vary", "lr=1e-3", "--seeds", "0"]) == 1
    assert "--seeds 0 is not allowed; allowed values: an integer >= 1" in capsys.readouterr().err
    assert cli.main(["sweep", "--config", cfg, "--vary", "lr=1e-3", "--parallel", "0"]) == 1
    assert "--parallel 0 is not allowed; allowed values: an integer >= 1" in capsys.readouterr().err
    assert not (dirs / "sweeps").exists()


def test_a_sweep_refuses_to_start_beside_another_training(dirs, capsys):
    d = sweep.create(json.loads(base_file(dirs, dirs / "m").read_text()), {"lr": [1e-3]}, 1, dirs / "s")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.acquire(runfolder.lock_path(), "20260101-000000-someone", pid=other.pid)
        assert cli.main(["sweep", "--resume", str(d)]) == 1
        err = capsys.readouterr().err
        assert "another training is running: run 20260101-000000-someone" in err and "--wait" in err
        assert sweep.load(d)["state"] == "queued" and not (d / "runs").exists()
    finally:
        other.kill()
        other.wait()


def test_results_of_a_sweep_over_task_sets_have_a_column_for_every_task(dirs):
    """Written run folders, in the trainer's layout: a variant without a task leaves its cells empty."""
    d = sweep.create({"seed": 1}, sweep.parse_vary(["tasks=sst,para+sts"]), 1, dirs / "tasks-sweep")
    doc = sweep.load(d)
    scores = [{"sst_acc": 0.4, "average": 0.4}, {"para_acc": 0.7, "sts_corr": 0.5, "average": 0.6}]
    for r, dev, step_times in zip(doc["runs"], scores, ([0.1, 0.3, 0.2], [0.5, 0.4, 0.9, 0.6])):
        run_dir = d / r["run_dir"]
        (run_dir / "best").mkdir(parents=True)
        runfolder.write_config(run_dir, json.loads((d / r["config"]).read_text()))
        runfolder.write_status(run_dir, {"state": "finished", "results": {"dev": dev}})
        (run_dir / "best" / "metrics.json").write_text(json.dumps({"dev": dev, "train": {}, "step": 3}))
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"type": "step", "step": i + 1, "step_time": t})
                                                       + "\n" for i, t in enumerate(step_times)))
        r["state"] = "done"
    sweep.save(d, doc)
    res = sweep.results(d)
    assert [c["key"] for c in res["columns"]] == ["para_acc", "sst_acc", "sts_corr", "average"]
    sst, pair = res["rows"]
    assert sst["metrics"]["sst_acc"] == {"mean": 0.4, "sd": None, "values": [0.4]}
    assert sst["metrics"]["para_acc"]["mean"] is None and pair["metrics"]["sts_corr"]["mean"] == 0.5
    # no sum variant: the first is the reference; the medians are 0.2 and 0.55
    assert res["reference"] == "tasks=sst" and pair["step_time_ratio"] == pytest.approx(0.55 / 0.2)
    table = sweep.results_markdown(res)
    assert "| tasks=sst | 1/1 | – | 0.400 | – | 0.400 | 200.0 | 1.00 |" in table


def test_each_variant_is_set_against_the_sum_variant_with_its_noise(dirs):
    """Two seeds a variant: the difference of the means against gradient_method=sum, its standard error
    from the seeds' sds, and "beyond noise" only past twice that."""
    d = sweep.create({"seed": 1}, sweep.parse_vary(["gradient_method=pcgrad,sum,mgda"]), 2, dirs / "vs-sweep")
    doc = sweep.load(d)
    sst = {"pcgrad": [0.40, 0.42], "sum": [0.30, 0.32], "mgda": [0.29, 0.35]}
    for r in doc["runs"]:
        method = r["variant"]["gradient_method"]
        value = sst[method][r["seed"] - 1]
        run_dir = d / r["run_dir"]
        (run_dir / "best").mkdir(parents=True)
        runfolder.write_config(run_dir, json.loads((d / r["config"]).read_text()))
        (run_dir / "best" / "metrics.json").write_text(json.dumps({"dev": {"sst_acc": value, "average": value}}))
        r["state"] = "done"
    sweep.save(d, doc)
    res = sweep.results(d)
    rows = {row["gradient_method"]: row for row in res["rows"]}
    assert res["reference"] == "gradient_method=sum" and rows["sum"]["vs_reference"] == {}
    sd = statistics.stdev
    pc, mg = rows["pcgrad"]["vs_reference"]["sst_acc"], rows["mgda"]["vs_reference"]["sst_acc"]
    assert pc["delta"] == pytest.approx(0.10) and pc["se"] == pytest.approx(math.sqrt(sd(sst["pcgrad"]) ** 2 / 2 +
                                                                                        sd(sst["sum"]) ** 2 / 2))
    assert pc["beyond_noise"] and not mg["beyond_noise"]  # mgda: +0.01 with a spread of 0.06
    table = sweep.results_markdown(res)
    # columns: para, sst, sts, average (the default tasks); these runs report sst only
    assert "| gradient_method=pcgrad | – | +0.100 (beyond noise) | – | +0.100 (beyond noise) |" in table
    assert "| gradient_method=mgda | – | +0.010 | – | +0.010 |" in table


# ---- real sweeps -----------------------------------------------------------------------------------

def test_a_real_2x2_sweep_runs_every_run_once_and_tabulates_their_own_metrics(dirs, tiny_base):
    """Two at a time (--parallel 2): the runs do not refuse each other; one at a time is the other tests'."""
    cfg = base_file(dirs, tiny_base)
    d = dirs / "sweep-2x2"
    p = mtbert("sweep", "--config", str(cfg), "--vary", "gradient_method=sum,pcgrad", "--seeds", "2",
               "--sweep-dir", str(d), "--parallel", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    for i in range(1, 5):
        assert f"[{i}/4] starting" in p.stdout and f"[{i}/4] done" in p.stdout
    doc = sweep.load(d)
    assert doc["state"] == "done" and [r["state"] for r in doc["runs"]] == ["done"] * 4
    first, second = doc["runs"][:2]
    assert second["started_at"] < first["ended_at"]  # side by side
    assert [r["attempts"] for r in doc["runs"]] == [1] * 4
    assert [(r["variant"]["gradient_method"], r["seed"]) for r in doc["runs"]] == \
        [("sum", 5), ("sum", 6), ("pcgrad", 5), ("pcgrad", 6)]
    for r in doc["runs"]:
        cfg_run = runfolder.read_config(d / r["run_dir"])
        assert (cfg_run["gradient_method"], cfg_run["seed"]) == (r["variant"]["gradient_method"], r["seed"])
        assert steps_of(d / r["run_dir"]) == [1, 2]
    res = json.loads((d / sweep.RESULTS_JSON).read_text())
    check_table(d, res)
    sum_row, pc_row = res["rows"]
    assert res["reference"] == "gradient_method=sum" and sum_row["step_time_ratio"] == pytest.approx(1.0)
    assert pc_row["step_time_ratio"] == pytest.approx(pc_row["step_time_s"] / sum_row["step_time_s"])
    table = (d / sweep.RESULTS_MD).read_text()
    avg = sum_row["metrics"]["average"]
    assert "| gradient_method=sum | 2/2 |" in table and f"{avg['mean']:.3f} ± {avg['sd']:.3f}" in table
    html = (d / sweep.RESULTS_HTML).read_text()
    assert "<script src=" not in html and len(html) > 1_000_000  # plotly.js inlined: no CDN
    again = mtbert("sweep", "--table", str(d))
    assert again.returncode == 0 and again.stdout == table


def test_a_killed_sweep_resumes_without_running_a_run_twice(dirs, tiny_base):
    """Killed (SIGKILL) with its trainer mid-run: --resume starts that run afresh. Killed alone, its
    trainer running on: --resume waits for that trainer instead of starting the run again."""
    cfg = base_file(dirs, tiny_base, train_subset=32, max_steps=6)
    d = dirs / "sweep-kill"
    sweep.create(json.loads(cfg.read_text()), {"lr": [1e-3]}, 2, d)  # run below, from the CLI
    run0, run1 = (d / r["run_dir"] for r in sweep.load(d)["runs"])

    def start():
        return subprocess.Popen([sys.executable, "-m", "mtbert", "sweep", "--resume", str(d)], env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def mid_run(run_dir: Path) -> int:  # the trainer's pid once it has taken a step
        wait_for(lambda: steps_of(run_dir), what=f"a step of {run_dir.name}")
        return runfolder.read_status(run_dir)["pid"]

    first = start()
    trainer = mid_run(run0)
    first.kill()
    os.kill(trainer, signal.SIGKILL)
    first.wait()
    assert sweep.read_sweep_status(d)["state"] == "interrupted"
    second = start()
    trainer = mid_run(run1)
    assert runfolder.read_status(run0)["state"] == "finished"
    second.kill()  # its trainer lives on in its own session
    second.wait()
    third = start()
    out = third.communicate(timeout=300)[0]
    assert third.returncode == 0, out
    assert "1 of 2 runs to go, 1 already done" in out
    assert "[2/2] waiting for its trainer" in out or "[2/2] already finished" in out
    assert not lock.pid_alive(trainer)
    doc = sweep.load(d)
    assert [r["state"] for r in doc["runs"]] == ["done", "done"]
    assert [r["attempts"] for r in doc["runs"]] == [2, 1]  # run 0 started again from scratch, run 1 once
    for run_dir in (run0, run1):
        assert steps_of(run_dir) == [1, 2, 3, 4, 5, 6]
        assert (run_dir / "train.log").read_text().count("[done] finished") == 1
    assert (d / sweep.RESULTS_MD).is_file()


def test_a_stopped_sweep_resumes_its_run_from_last(dirs, tiny_base):
    """SIGTERM: the trainer saves last/ and stops, the sweep is stopped; --resume continues the run
    from last/ with `train --resume`, no step lost or repeated."""
    # 4 steps an epoch, last/ at each epoch's end; enough epochs that SIGTERM lands mid-run
    cfg = base_file(dirs, tiny_base, epochs=6, max_steps=None)
    d = sweep.create(json.loads(cfg.read_text()), {"gradient_method": ["sum"]}, 1, dirs / "sweep-stop")
    run_dir = d / sweep.load(d)["runs"][0]["run_dir"]
    runner = subprocess.Popen([sys.executable, "-m", "mtbert", "sweep", "--resume", str(d)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (run_dir / "last" / "trainer_state.json").is_file(), what="the first epoch's last/")
    runner.terminate()
    out = runner.communicate(timeout=120)[0]
    assert runner.returncode == 130, out
    doc = sweep.load(d)
    assert doc["state"] == "stopped" and doc["runs"][0]["state"] == "queued", out
    stopped_at = runfolder.read_status(run_dir)["step"]
    assert runfolder.read_status(run_dir)["state"] == "stopped" and 4 <= stopped_at < 24
    p = mtbert("sweep", "--resume", str(d))
    assert p.returncode == 0 and "[1/1] resuming from last/" in p.stdout, p.stdout + p.stderr
    assert steps_of(run_dir) == list(range(1, 25))
    assert f"[resume] from {run_dir / 'last'} at step {stopped_at}" in (run_dir / "train.log").read_text()
    assert sweep.load(d)["state"] == "done" and (d / sweep.RESULTS_MD).is_file()


def test_emit_slurm_writes_one_command_per_array_index_and_collect_gathers_them(dirs, tiny_base, capsys):
    cfg = base_file(dirs, tiny_base)
    out = dirs / "slurm"
    assert cli.main(["sweep", "--config", str(cfg), "--vary", "gradient_method=sum,pcgrad", "--seeds", "2",
                     "--emit-slurm", str(out), "--slurm-option=--gres=gpu:1"]) == 0
    assert "--array=0-3" in capsys.readouterr().out
    script = (out / sweep.SLURM_SCRIPT).read_text()
    assert "#SBATCH --array=0-3\n" in script and "#SBATCH --gres=gpu:1\n" in script
    doc = sweep.load(out)
    assert doc["executor"] == "slurm" and [r["state"] for r in doc["runs"]] == ["queued"] * 4
    for r in doc["runs"]:
        line = next(x for x in script.splitlines() if x.strip().startswith(f"{r['index']})"))
        assert f"run {r['config']} {r['run_dir']} ;;" in line
        config = json.loads((out / r["config"]).read_text())
        assert (config["gradient_method"], config["seed"]) == (r["variant"]["gradient_method"], r["seed"])
        TrainConfig.from_dict(config)
    # two array tasks at once, as a cluster would run them: each run's lock is its own
    array_env = {**env(), "SLURM_SUBMIT_DIR": str(out), "MTBERT_PYTHON": sys.executable}
    script_path = str(out / sweep.SLURM_SCRIPT)
    tasks = [subprocess.Popen(["bash", script_path], cwd=out,
                              env={**array_env, "SLURM_ARRAY_TASK_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (0, 3)]
    for t in tasks:
        assert t.wait(300) == 0, t.communicate()[0]
    bad = subprocess.run(["bash", script_path], cwd=out, env={**array_env, "SLURM_ARRAY_TASK_ID": "4"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no run for array index 4" in bad.stderr
    assert cli.main(["sweep", "--collect", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = sweep.load(out)
    assert [r["state"] for r in doc["runs"]] == ["done", "queued", "queued", "done"]
    res = json.loads((out / sweep.RESULTS_JSON).read_text())
    assert printed == (out / sweep.RESULTS_MD).read_text() and "| gradient_method=sum | 1/2 |" in printed
    for row, r in zip(res["rows"], (doc["runs"][0], doc["runs"][3])):
        dev = json.loads((out / r["run_dir"] / "best" / "metrics.json").read_text())["dev"]
        assert row["seeds"] == 1 and row["metrics"]["average"] == {"mean": dev["average"], "sd": None,
                                                                    "values": [dev["average"]]}
