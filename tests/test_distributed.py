"""torchrun with 2 gloo processes on CPU applies the same update as one process on the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _both_ends(text: str, n: int = 3000) -> str:
    """A failed launch's output: its start (which rank failed first, and where) and its end."""
    return text if len(text) <= 2 * n else f"{text[:n]}\n[...]\n{text[-n:]}"


@pytest.mark.parametrize("method", ["pcgrad", "sum", "uw"])  # every method: the test below
def test_two_process_run_equals_single_process(tiny_base, tmp_path, method):
    cfg = dict(base_model=str(tiny_base), epochs=1, max_steps=3, batch_size=4, lr=0.2, dropout=0.0,
               train_subset=24, eval_subset=8, train_eval_subset=8, max_length=32, gradient_method=method,
               seed=5, optimizer="sgd")
    # plain SGD: Adam divides by sqrt(v) and so turns float rounding on near-zero gradients into
    # lr-sized differences; SGD keeps the comparison about the gradients themselves
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["-m", "mtbert", "train", "--config", str(tmp_path / "cfg.json"), "--no-progress"]
    one = subprocess.run([sys.executable, *args, "--run-dir", str(tmp_path / "a" / "one")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    two = subprocess.run([*torchrun, *args, "--run-dir", str(tmp_path / "b" / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, _both_ends(two.stderr)
    a = load_file(str(tmp_path / "a" / "one" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "two" / "last" / "model.safetensors"))
    base = load_file(str(tiny_base / "model.safetensors"))
    moved = max((a[k] - base[k]).abs().max() for k in a)
    assert moved > 1e-2  # training did change the weights, by far more than the tolerance below
    for k in a:  # float32 sums in another order: differences of ~1e-5 after 3 steps at lr 0.2
        assert torch.allclose(a[k], b[k], atol=5e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    ha = load_file(str(tmp_path / "a" / "one" / "last" / "heads.safetensors"))
    hb = load_file(str(tmp_path / "b" / "two" / "last" / "heads.safetensors"))
    assert all(torch.allclose(ha[k], hb[k], atol=5e-5, rtol=1e-4) for k in ha)
    # one run folder, written once: rank 0 only
    recs = [json.loads(x) for x in (tmp_path / "b" / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["type"] == "step"] == [1, 2, 3]


def test_every_method_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """Each method of METHODS, a few SGD steps on a small three-task model: 2 gloo ranks, each on half
    of every task's batch, end with the parameters (and learned task weights) of one process on the
    whole batch. The per-task gradients are averaged before the method runs, and a method that reads
    the losses (uw, dwa, gradnorm, famo) reads the global ones."""
    from ddp_methods import train

    from mtbert.methods import METHODS

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    two = subprocess.run([*torchrun, str(REPO / "tests" / "ddp_methods.py"), str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, _both_ends(two.stderr)
    from ddp_methods import Net
    start = Net().state_dict()
    for name in METHODS:
        one = train(name)
        assert max((one[k] - start[k]).abs().max() for k in start) > 1e-3, name  # the steps moved the weights
        got = load_file(str(tmp_path / f"{name}.safetensors"))
        assert set(got) == set(one), name
        for k in one:
            assert torch.allclose(got[k], one[k], atol=1e-10, rtol=1e-9), (name, k, (got[k] - one[k]).abs().max())
