"""SIGKILL at random moments, training and saving alike: the run always resumes from its last good
state (or says exactly why it cannot), readers never choke on a torn line, and the final losses
are those of a run that was never killed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from mtbert.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
KILLS = 20


def read_jsonl_tolerant(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a torn last line is allowed; anything else is not
            pass
    return out


def _status(run: Path) -> dict:
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _training(status: dict, pid: int) -> bool:
    return status.get("pid") == pid and "total_steps" in status


def test_random_sigkills_never_lose_the_run(tiny_base, tmp_path):
    cfg = dict(base_model=str(tiny_base), epochs=150, batch_size=4, lr=1e-3, train_subset=16, eval_subset=4,
               train_eval_subset=4, max_length=24, gradient_method="pcgrad", seed=9, eval_every=3)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # same threads, same float sums
    ref = tmp_path / "ref" / "run"
    ref.mkdir(parents=True)
    (ref / "config.json").write_text(json.dumps(TrainConfig(**cfg).to_dict()))
    subprocess.run([sys.executable, "-m", "mtbert", "train", "--no-progress", "--run-dir", str(ref)], cwd=REPO,
                   env=env, check=True, capture_output=True, timeout=600)
    expected = {r["step"]: r["loss"] for r in read_jsonl_tolerant(ref / "metrics.jsonl") if r["type"] == "step"}

    run = tmp_path / "runs" / "killed"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TrainConfig(**cfg).to_dict()))
    rng = random.Random(1234)
    kills = refused = 0
    while kills < KILLS:
        resumable = (run / "last" / "trainer_state.json").is_file() or (run / ".last.old" / "trainer_state.json").is_file()
        args = ["--resume", str(run)] if resumable else ["--run-dir", str(run)]
        p = subprocess.Popen([sys.executable, "-m", "mtbert", "train", "--no-progress", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # kill once this process is training (its pid and step count in status.json), at a random
        # moment of training or saving
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None and not _training(_status(run), p.pid):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.1, 1.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        err = p.communicate()[1]
        if p.returncode not in (0, -signal.SIGKILL):
            refused += 1
            assert "cannot resume" in err or "error:" in err, err  # it says why
        # after every kill: every file a reader looks at is readable
        status = json.loads((run / "status.json").read_text())
        assert status["state"] in ("queued", "running", "stopped", "finished", "failed")
        if (run / "metrics.jsonl").exists():
            recs = read_jsonl_tolerant(run / "metrics.jsonl")
            assert all(isinstance(r, dict) and "type" in r for r in recs)
        if status["state"] == "finished":
            break
    assert kills == KILLS, f"the run finished after only {kills} kills; make it longer"

    trained = sum(1 for r in read_jsonl_tolerant(run / "metrics.jsonl") if r.get("type") == "step")
    assert trained > 0, "every kill landed before training started: the test exercised nothing"
    if status["state"] != "finished":  # let it finish in peace
        r = subprocess.run([sys.executable, "-m", "mtbert", "train", "--no-progress", "--resume", str(run)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    got = [r for r in read_jsonl_tolerant(run / "metrics.jsonl") if r["type"] == "step"]
    # every step exactly once (records past the last save were dropped on resume) ...
    assert [r["step"] for r in got] == sorted(expected)
    # ... with exactly the losses of the run that was never killed
    assert all(r["loss"] == expected[r["step"]] for r in got)
    leftovers = [d.name for d in run.iterdir() if d.name.startswith(".") and d.is_dir()]
    assert leftovers in ([], [".last.old"], [".best.old"], [".best.old", ".last.old"]) or not leftovers
