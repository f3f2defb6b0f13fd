"""The trainer on a tiny random BERT: schedules, exact resume, telemetry, failures, settings."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtbert import lock
from mtbert.config import TrainConfig
from mtbert.data import Example
from mtbert.checkpoint import load_checkpoint
from mtbert.methods import METHODS
from mtbert.train import Plan, TaskStream, Trainer, TrainingError, WeightAverage

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(base, **kw) -> TrainConfig:
    d = dict(base_model=str(base), epochs=2, batch_size=4, lr=1e-3, train_subset=16, eval_subset=8,
             train_eval_subset=8, max_length=32, gradient_method="pcgrad", seed=3)
    return TrainConfig(**{**d, **kw})


def steps(run_dir: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in recs if r["type"] == "step"}


class StopAt(Trainer):
    """Asks for a graceful stop after `stop_at` steps, as SIGTERM would."""
    stop_at = 3

    def _train_step(self, tasks):
        rec = super()._train_step(tasks)
        if self.step == self.stop_at:
            self.stop_requested = True
        return rec


def assert_resumes_exactly(cfg, full: Path, part: Path, stop_at: int) -> None:
    """A run stopped after `stop_at` steps into `part` and resumed logs the same losses, step for
    step, as the uninterrupted run in `full`."""
    StopAt.stop_at = stop_at
    assert StopAt(cfg, part, progress=False).run() == "stopped"
    assert Trainer(cfg, part, resume=True, progress=False).run() == "finished"
    a, b = steps(full), steps(part)
    assert sorted(a) == sorted(b) and max(a) > stop_at
    for s in a:
        assert b[s]["loss"] == a[s]["loss"], f"step {s} differs after resume"


def test_parallel_epoch_ends_with_shortest_loader_and_longer_loaders_keep_position():
    ex = [Example(str(i), f"s{i}", None, 0) for i in range(12)]
    short = TaskStream("sst", ex[:6], 2, seed=1, bucket=False)   # 3 batches
    long = TaskStream("sts", ex, 2, seed=1, bucket=False)        # 6 batches
    plan = Plan("parallel", ["sst", "sts"], {"sst": 3, "sts": 6})
    assert plan.steps_per_epoch == 3
    seen = [[e.id for e in long.next()] for _ in range(2 * plan.steps_per_epoch)]
    for _ in range(2 * plan.steps_per_epoch):
        short.next()
    # two epochs of the parallel schedule walk the long loader through one whole pass, no repeats
    assert sorted(i for b in seen for i in b) == sorted(e.id for e in ex)
    assert short.state() == {"pass": 1, "position": 3}
    assert long.state() == {"pass": 0, "position": 6}


def test_round_robin_is_a_whole_pass_of_each_task_in_turn():
    plan = Plan("round-robin", ["sst", "para", "sts"], {"sst": 2, "para": 3, "sts": 1})
    assert plan.steps_per_epoch == 6
    assert [plan.tasks_at(i) for i in range(6)] == [["sst"], ["sst"], ["para"], ["para"], ["para"], ["sts"]]


def test_sampled_schedules_draw_tasks_with_stickland_and_murray_probabilities():
    n = {"sst": 10, "para": 80, "sts": 5}
    prop = Plan("proportional", list(n), n)
    assert prop.steps_per_epoch == 95
    assert prop.probabilities() == pytest.approx({t: v / 95 for t, v in n.items()})
    temp = Plan("temperature", list(n), n, temperature=2.0)
    root = {t: v ** 0.5 for t, v in n.items()}
    assert temp.probabilities() == pytest.approx({t: v / sum(root.values()) for t, v in root.items()})
    assert Plan("temperature", list(n), n, temperature=1.0).probabilities() == pytest.approx(prop.probabilities())
    annealed = Plan("annealed", list(n), n, epochs=5)
    # alpha = 1 - 0.8 (e - 1) / (E - 1) for epochs e = 1..E: proportional first, N^0.2 last
    assert [annealed.alpha(e) for e in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert annealed.probabilities(0) == pytest.approx(prop.probabilities())
    fifth = {t: v ** 0.2 for t, v in n.items()}
    assert annealed.probabilities(4) == pytest.approx({t: v / sum(fifth.values()) for t, v in fifth.items()})
    # the draws follow the probabilities (4,000 draws: each share within 0.03 of its probability) ...
    for plan, epoch in ((prop, 0), (temp, 0), (annealed, 4)):
        drawn = [plan.tasks_at(i, epoch)[0] for i in range(4000)]
        for t, p in plan.probabilities(epoch).items():
            assert abs(drawn.count(t) / 4000 - p) < 0.03, (plan.schedule, t)
    # ... and are a pure function of (seed, epoch, step): what a resumed run and every rank draw
    assert [temp.tasks_at(i, 1) for i in range(50)] == [Plan("temperature", list(n), n).tasks_at(i, 1) for i in range(50)]
    assert [temp.tasks_at(i, 1) for i in range(50)] != [Plan("temperature", list(n), n, seed=1).tasks_at(i, 1)
                                                       for i in range(50)]


def test_a_sampled_run_records_each_steps_task_and_resumes_exactly(tiny_base, tmp_path):
    cfg = tiny_cfg(tiny_base, epochs=2, schedule="temperature", sampling_temperature=3.0, train_subset=12)
    full = tmp_path / "runs" / "full"
    Trainer(cfg, full, progress=False).run()
    a = steps(full)
    assert len(a) == 2 * 9  # an epoch: 3 tasks x 3 batches
    assert all(len(r["tasks"]) == 1 and list(r["loss"]) == r["tasks"] for r in a.values())
    assert len({r["tasks"][0] for r in a.values()}) > 1
    part = tmp_path / "runs" / "part"
    StopAt.stop_at = 11
    assert StopAt(cfg, part, progress=False).run() == "stopped"
    assert Trainer(cfg, part, resume=True, progress=False).run() == "finished"
    b = steps(part)
    assert [b[s]["tasks"] for s in sorted(b)] == [a[s]["tasks"] for s in sorted(a)]
    assert all(b[s]["loss"] == a[s]["loss"] for s in a if s > 11)


def test_sampling_weights_scale_a_tasks_draw_probability_then_renormalise():
    n = {"sst": 10, "para": 80, "sts": 5}
    w = {"sst": 0.5}
    # p_k = w_k N_k^α / Σ w_j N_j^α, by hand: proportional (α = 1) and temperature τ = 2 (α = 1/2)
    assert Plan("proportional", list(n), n, weights=w).probabilities() == pytest.approx(
        {"sst": 5 / 90, "para": 80 / 90, "sts": 5 / 90})
    root = {"sst": 0.5 * 10 ** 0.5, "para": 80 ** 0.5, "sts": 5 ** 0.5}
    assert Plan("temperature", list(n), n, weights=w).probabilities() == pytest.approx(
        {t: v / sum(root.values()) for t, v in root.items()})
    plan = Plan("proportional", list(n), n, weights={"sts": 8.0})  # sts: 40 of 130
    drawn = [plan.tasks_at(i)[0] for i in range(4000)]
    assert abs(drawn.count("sts") / 4000 - 40 / 130) < 0.03


def test_a_run_draws_its_tasks_with_the_sampling_weights(tiny_base, tmp_path):
    """A tiny weight on SST: the trainer's plan carries it and the steps it records follow that plan."""
    cfg = tiny_cfg(tiny_base, epochs=2, schedule="proportional", sampling_weights="sst=0.001", train_subset=12)
    run = tmp_path / "runs" / "weighted"
    trainer = Trainer(cfg, run, progress=False)
    trainer.run()
    assert trainer.plan.weights == {"sst": 0.001}
    drawn = [r["tasks"] for _, r in sorted(steps(run).items())]
    assert len(drawn) == 2 * 9
    expected = [trainer.plan.tasks_at(i, e) for e in range(2) for i in range(9)]
    assert drawn == expected
    assert ["sst"] not in drawn
    # the same run without the weight draws SST at these seeds
    unweighted = Plan("proportional", cfg.tasks, trainer.plan.n_batches, seed=cfg.seed)
    assert ["sst"] in [unweighted.tasks_at(i, e) for e in range(2) for i in range(9)]


@pytest.mark.parametrize("value, message", [
    ("sst=0", r"setting sampling_weights='sst=0' is not allowed; allowed values: task=w items, .* a number > 0"),
    ("sst=-1", r"allowed values: task=w items"),
    ("sst=x", r"allowed values: task=w items"),
    ("sst=nan", r"allowed values: task=w items"),
    ("sst=1,sst=2", r"allowed values: task=w items, one per task"),
    ("mrpc=2", r"setting sampling_weights names mrpc; allowed values: task=w for the tasks trained"),
])
def test_a_bad_sampling_weight_is_refused_by_name(value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(schedule="proportional", sampling_weights=value)


def test_sampling_weights_are_read_from_the_command_line_or_yaml_and_need_a_sampled_schedule():
    assert TrainConfig(schedule="temperature", sampling_weights="sst=0.5, sts=2").sampling_weight_map() == {
        "sst": 0.5, "sts": 2.0}
    assert TrainConfig(schedule="annealed", sampling_weights={"sst": 0.25}).sampling_weights == ["sst=0.25"]
    assert TrainConfig(schedule="parallel").sampling_weight_map() == {}
    with pytest.raises(ValueError, match=r"sampling_weights=.* not allowed with schedule='parallel'; allowed "
                                         r"values: none, or set schedule to proportional"):
        TrainConfig(schedule="parallel", sampling_weights="sst=0.5")


def test_a_bad_sampling_temperature_is_refused_by_name():
    with pytest.raises(ValueError, match="sampling_temperature"):
        TrainConfig(sampling_temperature=0.5)


def test_task_stream_order_is_a_function_of_seed_and_pass():
    ex = [Example(str(i), "x" * i, None, 0) for i in range(20)]
    a, b = TaskStream("sst", ex, 3, 5, bucket=True), TaskStream("sst", ex, 3, 5, bucket=True)
    first = [[e.id for e in a.next()] for _ in range(2 * a.n_batches)]
    b.load_state({"pass": 1, "position": 3})
    assert [e.id for e in b.next()] == first[a.n_batches + 3]


def test_run_writes_folder_telemetry_and_checkpoints(tiny_base, tmp_path):
    run = tmp_path / "runs" / "r"
    assert Trainer(tiny_cfg(tiny_base, epochs=1), run, progress=False).run() == "finished"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["error"] is None
    assert status["step"] == status["total_steps"] == 4  # 16 examples / batch 4, shortest loader
    # PCGrad's task weights: one per task each step, >= 1 (a projection adds to the other task's weight)
    assert all(set(r["task_weights"]) == {"sst", "para", "sts"} and min(r["task_weights"].values()) >= 1.0
               for r in steps(run).values())
    recs = steps(run)
    r = recs[1]
    assert set(r["loss"]) == {"sst", "para", "sts"} and set(r["grad_norm"]) == {"sst", "para", "sts"}
    assert set(r["cos"]) == {"sst/para", "sst/sts", "para/sts"}
    assert r["conflicts"] == sum(c < 0 for c in r["cos"].values())
    assert r["projections"] >= r["conflicts"] and r["examples_per_s"] > 0 and r["lr"] == pytest.approx(1e-3)
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert {e["split"] for e in evals} == {"dev", "train"}
    assert json.loads((run / "config.json").read_text())["gradient_method"] == "pcgrad"
    for d in ("best", "last"):
        assert (run / d / "model.safetensors").is_file() and (run / d / "heads.safetensors").is_file()
    assert set(json.loads((run / "best" / "metrics.json").read_text())) >= {"train", "dev"}
    assert not (run.parent / ".lock").exists()


def test_calibrated_quora_threshold_is_fitted_on_the_subset_and_reported_on_the_rest(tiny_base, tmp_path):
    run = tmp_path / "runs" / "cal"
    cfg = tiny_cfg(tiny_base, epochs=2, calibrate_para=True, eval_subset=6, full_eval_at_s=[1e-6])
    assert Trainer(cfg, run, progress=False).run() == "finished"
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    subset = [e for e in evals if e["split"] == "dev" and not e["full"]]
    full = [e for e in evals if e["split"] == "dev" and e["full"]]
    assert subset and all("para_logit_offset" in e and "para_acc_uncalibrated" in e for e in subset)
    assert all(e["para_acc"] >= e["para_acc_uncalibrated"] for e in subset)  # fitted on these very pairs
    assert len(full) == 2  # the first-step mark and the final report
    n_dev = full[-1]["examples"]["para"]
    assert all(e["para_heldout_examples"] == n_dev - 6 for e in full)
    assert all(0.0 <= e["para_acc_heldout"] <= 1.0 for e in full)
    best = json.loads((run / "best" / "mtbert.json").read_text())
    chosen = json.loads((run / "best" / "metrics.json").read_text())
    # the final report uses the best checkpoint's own threshold, not a refit
    assert best["model"]["logit_offsets"]["para"] == chosen["dev"]["para_logit_offset"] == full[-1]["para_logit_offset"]


# every method with state: pcgrad's generator; uw's and gradnorm's learned weights (values, Adam moments and
# gradnorm's first losses); famo's logits, own Adam and last losses; dwa's windows (2 steps: they matter
# by step 7); rlw's generator
@pytest.mark.parametrize("method", [{"gradient_method": "pcgrad"}, {"gradient_method": "uw"},
                                    {"gradient_method": "gradnorm"}, {"gradient_method": "famo"},
                                    {"gradient_method": "dwa", "dwa_window": 2}, {"gradient_method": "rlw"},
                                    {"gradient_method": "gradvac", "gradvac_beta": 0.5}],  # its targets move
                         ids=lambda m: m["gradient_method"])
def test_stop_then_resume_gives_the_same_losses_as_an_uninterrupted_run(tiny_base, tmp_path, method):
    cfg = tiny_cfg(tiny_base, epochs=2, lr_decay="linear", warmup_steps=2, bucket=True, layer_lr_decay=0.8,
                   **method)
    full = tmp_path / "runs" / "full"
    Trainer(cfg, full, progress=False).run()
    part = tmp_path / "runs" / "part"
    StopAt.stop_at = 6  # mid second epoch: data position, optimizer, scheduler, RNGs all matter
    assert StopAt(cfg, part, progress=False).run() == "stopped"
    assert json.loads((part / "status.json").read_text())["state"] == "stopped"
    assert max(steps(part)) == 6
    assert Trainer(cfg, part, resume=True, progress=False).run() == "finished"
    a, b = steps(full), steps(part)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in range(7, 9):
        assert b[s]["loss"] == a[s]["loss"], f"step {s} differs after resume"
        assert b[s]["lr"] == a[s]["lr"]
        assert b[s]["task_weights"] == a[s]["task_weights"]
    if method["gradient_method"] != "pcgrad":  # the weights really moved, so their state was needed
        assert a[8]["task_weights"] != a[1]["task_weights"]


def test_sigterm_stops_gracefully_and_cli_resume_matches(tiny_base, tmp_path):
    cfg = tiny_cfg(tiny_base, epochs=3, train_subset=24).to_dict()
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mtbert", "train", "--config", str(tmp_path / "cfg.json"), "--no-progress"]
    full, part = tmp_path / "runs" / "full", tmp_path / "runs2" / "part"
    subprocess.run(cmd + ["--run-dir", str(full)], check=True, cwd=REPO, env=env, capture_output=True)
    p = subprocess.Popen(cmd + ["--run-dir", str(part)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not ((part / "metrics.jsonl").exists() and len(steps(part)) >= 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 0, out
    status = json.loads((part / "status.json").read_text())
    stopped_at = status["step"] if status["state"] == "stopped" else None
    assert status["state"] == "stopped", out
    assert (part / "last" / "trainer_state.json").is_file()
    r = subprocess.run([sys.executable, "-m", "mtbert", "train", "--resume", str(part), "--no-progress"],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = steps(full), steps(part)
    assert sorted(a) == sorted(b)
    assert all(a[s]["loss"] == b[s]["loss"] for s in a if s > stopped_at)


def test_non_finite_loss_fails_the_run_with_a_clear_message(tiny_base, tmp_path):
    class NaNAt3(Trainer):
        def _train_step(self, tasks):
            if self.step == 2:
                loss = self.model.loss
                self.model.loss = lambda t, b, *rest: loss(t, b, *rest) * float("nan")
            return super()._train_step(tasks)

    run = tmp_path / "runs" / "nan"
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        NaNAt3(tiny_cfg(tiny_base), run, progress=False).run()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "nan" in status["error"]


def test_frozen_mode_trains_heads_only(tiny_base, tmp_path):
    run = tmp_path / "runs" / "frozen"
    t = Trainer(tiny_cfg(tiny_base, epochs=1, mode="frozen", lr=1e-2), run, progress=False)
    t.run()
    from mtbert.checkpoint import load_base, load_checkpoint
    base, _ = load_base(str(tiny_base))
    model, _, meta = load_checkpoint(run / "last")
    assert not (run / "last" / "model.safetensors").exists()  # heads-only checkpoint names its base
    for (n, p), (_, q) in zip(base.named_parameters(), model.encoder.named_parameters()):
        assert torch.equal(p, q), n
    from mtbert.model import ModelConfig, MultitaskBert
    torch.manual_seed(t.cfg.seed)  # the trainer's own initialisation, replayed
    enc, _ = load_base(str(tiny_base), dropout=t.cfg.dropout)
    initial = MultitaskBert(enc, ModelConfig())
    for name in ("sst", "para", "sts"):
        assert not torch.equal(initial.task_heads[name].weight, model.task_heads[name].weight), name
    assert meta["base_model"] == str(tiny_base)


def test_layer_lr_decay_gives_each_layer_its_own_learning_rate(tiny_base, tmp_path):
    cfg = tiny_cfg(tiny_base, max_steps=2, lr=1e-3, head_lr=5e-3, layer_lr_decay=0.5, freeze_word_embeddings=True)
    assert Trainer(cfg, tmp_path / "runs" / "lld", progress=False).run() == "finished"
    t = Trainer(cfg, tmp_path / "runs" / "lld2", progress=False)
    t._setup()  # the optimizer as built (run() swaps in the best checkpoint's weights at the end)
    lr_of = {id(p): g["initial_lr"] for g in t.opt.param_groups for p in g["params"]}
    enc = t.model.encoder
    L = len(enc.layers)
    assert L >= 2
    for l, layer in enumerate(enc.layers):
        assert {lr_of[id(p)] for p in layer.parameters()} == {1e-3 * 0.5 ** (L - 1 - l)}
    assert id(enc.embeddings.word_embeddings.weight) not in lr_of  # frozen: in no group
    assert {lr_of[id(p)] for n, p in enc.embeddings.named_parameters() if p.requires_grad} == {1e-3 * 0.5 ** L}
    assert {lr_of[id(p)] for h in t.model.heads().values() for p in h.parameters()} == {5e-3}
    n_trainable = sum(1 for p in t.model.parameters() if p.requires_grad)
    assert len(lr_of) == n_trainable == sum(len(g["params"]) for g in t.opt.param_groups)  # each once
    first = next(r for r in steps(tmp_path / "runs" / "lld").values())
    assert first["lr"] == 1e-3  # the logged lr is the top layer's
    with pytest.raises(ValueError, match="layer_lr_decay=1.5 is not allowed; allowed values: 0 < layer_lr_decay <= 1"):
        tiny_cfg(tiny_base, layer_lr_decay=1.5)


def test_task_weight_scales_that_tasks_gradient_and_not_the_logged_loss(tiny_base, tmp_path):
    # plain SGD, no clipping, one task: the first update is -lr * w * grad, so w=3 moves every weight 3x as far
    def first_update(w, name):
        cfg = tiny_cfg(tiny_base, tasks=["sst"], max_steps=1, optimizer="sgd", lr=0.1, grad_clip=None,
                       sst_weight=w, gradient_method="sum", dropout=0.0)
        t = Trainer(cfg, tmp_path / name / "run", progress=False)
        t._setup()
        t.metrics = type("Sink", (), {"write": lambda self, rec: None})()  # run() would open metrics.jsonl
        before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
        rec = t._train_step(["sst"])
        return {n: p.detach() - before[n] for n, p in t.model.named_parameters()}, rec["loss"]["sst"]
    one, loss1 = first_update(1.0, "a")
    three, loss3 = first_update(3.0, "b")
    assert loss1 == loss3  # the same batch; the weight is not in the logged loss
    moved = [n for n in one if one[n].abs().max() > 0]
    assert "task_heads.sst.weight" in moved and any(n.startswith("encoder.") for n in moved)
    for n in moved:
        torch.testing.assert_close(three[n], 3 * one[n], rtol=1e-3, atol=1e-6)  # p_new - p_old rounds at |p|
    with pytest.raises(ValueError, match="para_weight=0 is not allowed; allowed values: a number > 0"):
        tiny_cfg(tiny_base, para_weight=0)


def test_weight_average_is_the_warmed_up_exponential_average():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)  # frozen: never averaged
    wa = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        wa.update()
        d = min(0.9, (1 + n) / (10 + n))  # 0.18, 0.27, ... then 0.9 from n = 80/9 on
        expected = [e if not p.requires_grad else d * e + (1 - d) * p.detach()
                    for e, p in zip(expected, model.parameters())]
    for a, e in zip(wa.model.parameters(), expected):
        torch.testing.assert_close(a, e)
    assert not torch.equal(wa.model[1].bias, model[1].bias)  # the frozen copy kept its value
    with pytest.raises(ValueError, match="ema_decay=1.0 is not allowed; allowed values: none .* 0 < ema_decay < 1"):
        TrainConfig(ema_decay=1.0)


def test_ema_run_evaluates_and_keeps_the_average_and_resumes_exactly(tiny_base, tmp_path):
    """best/ holds the average at its step (not the training weights), and a stopped run resumes its average."""
    class Snapshots(Trainer):
        def _setup(self):
            super()._setup()
            self.snaps = [[p.detach().clone() for p in self.ema.live]]  # the average starts here

        def _train_step(self, tasks):
            rec = super()._train_step(tasks)
            self.snaps.append([p.detach().clone() for p in self.ema.live])
            return rec
    cfg = tiny_cfg(tiny_base, epochs=2, ema_decay=0.8, eval_every=1, final_full_eval=False)
    full = Snapshots(cfg, tmp_path / "runs" / "full", progress=False)
    full.run()
    chosen = json.loads((tmp_path / "runs" / "full" / "best" / "metrics.json").read_text())["step"]
    avg = full.snaps[0]
    for n, snap in enumerate(full.snaps[1:chosen + 1], start=1):
        d = min(0.8, (1 + n) / (10 + n))
        avg = [d * a + (1 - d) * w for a, w in zip(avg, snap)]
    best, _, _ = load_checkpoint(tmp_path / "runs" / "full" / "best")
    last, _, _ = load_checkpoint(tmp_path / "runs" / "full" / "last")
    best_p, last_p = dict(best.named_parameters()), dict(last.named_parameters())
    averaged = {id(a) for a in full.ema.avg}
    ema_names = [n for n, a in full.ema.model.named_parameters() if id(a) in averaged]
    assert len(ema_names) == len(full.ema.avg) > 0
    for n, want in zip(ema_names, avg):
        torch.testing.assert_close(best_p[n], want, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(best_p[n], last_p[n]) for n in ema_names)  # last/: the training weights

    StopAt.stop_at = 5
    part = tmp_path / "runs" / "part"
    assert StopAt(cfg, part, progress=False).run() == "stopped"
    assert Trainer(cfg, part, resume=True, progress=False).run() == "finished"
    evals = lambda run: [(r["step"], r["average"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                         if r["type"] == "eval" and r["split"] == "dev"]  # noqa: E731
    assert evals(part) == evals(tmp_path / "runs" / "full")  # the average's evaluations, resumed exactly
    with pytest.raises(TrainingError, match="holds no weight average"):
        Trainer(tiny_cfg(tiny_base, epochs=3, ema_decay=0.8, eval_every=1), full_no_ema(tiny_base, tmp_path),
                resume=True, progress=False).run()


def full_no_ema(tiny_base, tmp_path) -> Path:
    run = tmp_path / "runs3" / "plain"
    StopAt.stop_at = 2
    StopAt(tiny_cfg(tiny_base, epochs=3), run, progress=False).run()
    return run


def test_round_robin_and_task_subset(tiny_base, tmp_path):
    run = tmp_path / "runs" / "rr"
    Trainer(tiny_cfg(tiny_base, epochs=1, schedule="round-robin", tasks=["para", "sts"]), run,
            progress=False).run()
    recs = steps(run)
    assert [list(r["loss"]) for r in recs.values()] == [["para"]] * 4 + [["sts"]] * 4
    status = json.loads((run / "status.json").read_text())
    assert "sst_acc" not in status["results"]["dev"] and "para_acc" in status["results"]["dev"]


def test_second_run_is_refused_while_the_lock_is_held(tiny_base, tmp_path):
    root = tmp_path / "runs"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.acquire(root / ".lock", "the-other-run", pid=holder.pid)
        with pytest.raises(TrainingError, match="the-other-run"):
            Trainer(tiny_cfg(tiny_base), root / "second", progress=False).run()
        assert json.loads((root / "second" / "status.json").read_text())["state"] == "failed"
    finally:
        holder.kill()
        holder.wait()
    # the owner is gone: its lock is stale and the next run takes it over
    assert Trainer(tiny_cfg(tiny_base, epochs=1, max_steps=1), root / "third", progress=False).run() == "finished"


@pytest.mark.parametrize("bad, needle", [
    ({"gradient_method": "adam"}, "gradient_method='adam' is not allowed; allowed values: " + ", ".join(METHODS)),
    ({"tasks": ["sst", "nli"]}, "tasks"),
    ({"lr": -1}, "lr=-1"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"pooling": "max"}, "allowed values: cls, mean"),
    ({"learning_rate": 1}, "unknown setting(s) learning_rate"),
])
def test_invalid_settings_name_the_setting_and_allowed_values(bad, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(bad)
    assert needle in str(e.value)


def test_cli_settings_from_yaml_and_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 2.0e-5\ngradient_method: pcgrad\ntasks: [sst, sts]\n"
                                     "time_budget_s: 600\neval_every_s: 60\nbucket: true\n")
    from mtbert.cli import build_parser, given_settings
    from mtbert.config import read_config_file
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--lr", "3e-5",
                                      "--time-budget-s", "none", "--no-bucket", "--layer-lr-decay", "0.9"])
    flags = given_settings(args)
    assert flags == {"lr": 3e-5, "time_budget_s": None, "bucket": False, "layer_lr_decay": 0.9}
    cfg = TrainConfig.from_dict({**read_config_file(args.config), **flags})
    assert cfg.lr == 3e-5 and cfg.gradient_method == "pcgrad" and cfg.tasks == ["sst", "sts"]
    # 'none' clears the file's budget; what was not given keeps the file's value
    assert cfg.time_budget_s is None and cfg.eval_every_s == 60 and cfg.bucket is False
    r = subprocess.run([sys.executable, "-m", "mtbert", "train", "--schedule", "zigzag"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "parallel" in r.stderr and "round-robin" in r.stderr


@pytest.mark.parametrize("method", ["sum", "famo"])
def test_telemetry_every_n_steps_records_it_there_and_trains_the_same(tiny_base, tmp_path, method):
    """telemetry_every=3: gradient norms, cosines and conflicts at steps 1, 4, 7 only; in between one
    backward of the weighted loss, which gives the same training as per-task gradients every step
    (float rounding aside). gradnorm and the gradient methods cannot skip it; they are not tested here."""
    kw = dict(gradient_method=method, max_steps=7, dropout=0.0)
    Trainer(tiny_cfg(tiny_base, telemetry_every=1, **kw), tmp_path / "every", progress=False).run()
    Trainer(tiny_cfg(tiny_base, telemetry_every=3, **kw), tmp_path / "third", progress=False).run()
    every, third = steps(tmp_path / "every"), steps(tmp_path / "third")
    assert [s for s, r in third.items() if "cos" in r] == [1, 4, 7]
    assert all("grad_norm" in r and "conflicts" in r for r in every.values())
    assert all("grad_norm" not in r for s, r in third.items() if s not in (1, 4, 7))
    for s in every:
        for t in every[s]["loss"]:
            assert third[s]["loss"][t] == pytest.approx(every[s]["loss"][t], rel=1e-4, abs=1e-6), (s, t)
            assert third[s]["task_weights"][t] == pytest.approx(every[s]["task_weights"][t], rel=1e-4)
