"""Each training setting is declared once, beside its TrainConfig field (mtbert/config.py): section,
label, help, choices or range, card, resume. The validation, the `train` flags and their --help, the
resume check and the model card read that declaration (the Train form's widgets: tests/test_app.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from mtbert.cli import NOT_FLAGS, build_parser, given_settings, resume_refusal
from mtbert.config import CARD_SETTINGS, RESUME_SETTINGS, TrainConfig, allowed_values, kind, optional
from mtbert.studio import settings

REPO = Path(__file__).resolve().parents[1]
SETTINGS = fields(TrainConfig)
CONSTRAINED = [f for f in SETTINGS if f.metadata.get("choices") or f.metadata.get("range")]


def refusal(name: str, value) -> str | None:
    """TrainConfig's message for one setting at this value; None: accepted."""
    try:
        TrainConfig.from_dict({name: value})
    except ValueError as e:
        return str(e)
    return None


def outside_and_inside(f) -> tuple[list, list]:
    """Values the declaration refuses, and values it takes: a wrong choice, or each bound from both
    sides (the bound itself as its open/closed says)."""
    m = f.metadata
    if m["choices"]:
        return ["nope", 1], list(m["choices"]) + [None] * optional(f)
    r, eps = m["range"], (1 if kind(f) == "int" else 1e-9)
    bad, good = [], [None] if optional(f) else []
    for bound, open_, inward in ((r.low, r.low_open, +1), (r.high, r.high_open, -1)):
        if bound is not None:
            (bad if open_ else good).append(bound)
            good.append(bound + inward * eps)
            bad.append(bound - inward * eps)
    if kind(f) == "list":
        return [[v] for v in bad], [[v] for v in good if v is not None]
    return bad, good


def test_every_setting_is_declared_with_a_section_label_and_help():
    for f in SETTINGS:
        m = f.metadata
        assert m, f"{f.name}: declared without setting(...) in mtbert/config.py"
        assert m["section"] and m["help"], f.name
        assert m["label"] and m["label"] != f.name and "_" not in m["label"], f"{f.name}: no readable label"
        assert not (m["choices"] and m["range"]), f.name
        assert kind(f) in ("bool", "int", "float", "list", "str"), f.name
    assert len({f.metadata["label"] for f in SETTINGS}) == len(SETTINGS)  # no two settings look alike
    assert len(CONSTRAINED) >= 30


@pytest.mark.parametrize("f", CONSTRAINED, ids=lambda f: f.name)
def test_a_value_outside_the_declaration_is_refused_naming_the_setting_and_its_allowed_values(f):
    bad, good = outside_and_inside(f)
    allowed = allowed_values(f)
    for value in bad + ([["x"], [True]] if kind(f) == "list" else ["1", True]):  # and values of another type
        msg = refusal(f.name, value)
        assert msg == f"setting {f.name}={value!r} is not allowed; allowed values: {allowed}", (value, msg)
    for value in good:
        assert refusal(f.name, value) is None, (f.name, value)
    m = f.metadata  # the allowed values are named, not only alluded to
    named = m["choices"] or [f"{b:g}" for b in (m["range"].low, m["range"].high) if b is not None]
    assert all(str(v) in allowed for v in named), allowed
    assert ("none" in allowed) == (optional(f) or "none" in m["choices"]), allowed


@pytest.mark.parametrize("setting, value, message", [
    ("lr", -1, "setting lr=-1 is not allowed; allowed values: a number > 0"),
    ("max_steps", 0, "setting max_steps=0 is not allowed; allowed values: none or an integer >= 1"),
    ("max_length", 513, "setting max_length=513 is not allowed; allowed values: an integer, 8 <= max_length <= 512"),
    ("dropout", 1.0, "setting dropout=1.0 is not allowed; allowed values: 0 <= dropout < 1"),
    ("para_encoding", "cross", "setting para_encoding='cross' is not allowed; allowed values: none, separate, joint, both"),
    ("full_eval_at_s", "60, soon", "setting full_eval_at_s=[60.0, 'soon'] is not allowed; allowed values: "
                                   "a list of numbers > 0"),
    ("bf16", "no", "setting bf16='no' is not allowed; allowed values: true, false"),
    ("epochs", 2.5, "setting epochs=2.5 is not allowed; allowed values: an integer >= 1"),
    ("sts_weight", float("inf"), "setting sts_weight=inf is not allowed; allowed values: a number > 0"),
])
def test_refusal_messages_in_words(setting, value, message):
    assert refusal(setting, value) == message


@pytest.mark.parametrize("f", [f for f in CONSTRAINED if f.name not in NOT_FLAGS], ids=lambda f: f.name)
def test_the_train_flag_takes_what_the_declaration_allows(f, capsys):
    """A choice flag offers exactly the declared choices (argparse refuses the rest); a number flag
    passes its value to TrainConfig, which refuses one outside the range by the setting's name."""
    flag = "--" + f.name.replace("_", "-")
    bad, good = outside_and_inside(f)
    def typed(v) -> str:  # as on the command line; --flag=-1 so that -1 is not taken for an option
        return f"{flag}=" + (",".join(map(str, v)) if isinstance(v, list) else "none" if v is None else str(v))

    for value in good:
        args = build_parser().parse_args(["train", typed(value)])
        assert TrainConfig.from_dict(given_settings(args)).to_dict()[f.name] == value
    for value in bad:
        if f.metadata["choices"]:
            with pytest.raises(SystemExit):
                build_parser().parse_args(["train", typed(value)])
            assert "invalid choice" in capsys.readouterr().err
        else:
            args = build_parser().parse_args(["train", typed(value)])
            with pytest.raises(ValueError, match=re.escape(f"is not allowed; allowed values: {allowed_values(f)}")):
                TrainConfig.from_dict(given_settings(args))


def test_train_help_shows_every_settings_label_help_and_allowed_values():
    r = subprocess.run([sys.executable, "-m", "mtbert", "train", "--help"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "100000"})  # no wrapping inside a help text
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    for f in SETTINGS:
        flag, m, allowed = "--" + f.name.replace("_", "-"), f.metadata, allowed_values(f)
        if f.name in NOT_FLAGS:
            assert f"{flag} " not in out
            continue
        about = " ".join(f"{m['label']}: {m['help']} (".split())
        assert f"{flag}" in out and about in out, f.name
        if kind(f) != "bool" and allowed:
            assert f"{about}allowed: {allowed};" in out, f.name


def test_settings_form_reads_the_declarations():
    spec = {s.name: s for s in settings.settings_spec()}
    assert set(spec) == {f.name for f in SETTINGS} - set(settings.NOT_IN_FORM)
    assert {"tasks_file", "task_definitions", "data_dir", "quora_train"} <= set(settings.NOT_IN_FORM)
    for f in SETTINGS:
        if f.name in spec:
            s, m = spec[f.name], f.metadata
            assert (s.section, s.label, s.description, s.range) == (m["section"], m["label"], m["help"], m["range"])
            assert s.choices == (m["choices"] if f.name != "tasks" else ("sst", "para", "sts"))
            assert s.help.startswith(m["help"]) and f"Config key: `{f.name}`" in s.help
            if s.kind != "bool" and allowed_values(f):
                assert s.help.endswith(f" · Allowed: {allowed_values(f)}")
    order = [s.section for s in settings.settings_spec()]
    assert order[0] == "Model and tasks" and sorted(set(order), key=order.index) == \
        ["Model and tasks", "Multitask method", "Optimisation", "Budget", "Evaluation", "Machine"]  # each in one piece


def test_the_model_card_lists_the_settings_declared_for_it_and_no_paths():
    assert set(CARD_SETTINGS) == {f.name for f in SETTINGS if f.metadata["card"]}
    assert {"gradient_method", "lr", "tasks", "sst_weight", "seed"} <= set(CARD_SETTINGS)
    assert not {"data_dir", "quora_train", "tasks_file", "task_definitions", "name"} & set(CARD_SETTINGS)


def test_resume_refuses_a_setting_not_declared_for_it():
    assert RESUME_SETTINGS == ("epochs", "max_steps", "time_budget_s", "eval_every", "device", "bf16_cpu")
    assert resume_refusal({}) is None and resume_refusal({"epochs": 3, "time_budget_s": None}) is None
    assert resume_refusal({"lr": 1e-3, "epochs": 3, "gradient_method": "sum"}) == (
        "--resume can only change epochs, max_steps, time_budget_s, eval_every, device, bf16_cpu; not "
        "gradient_method, lr")


def test_train_resume_refuses_a_non_resume_flag_and_takes_a_resume_one(tmp_path):
    """For real: `train --resume` with --lr stops before touching the run; with --epochs it writes the
    new budget into config.json and goes on to the trainer (which finds no saved state here)."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(TrainConfig(name="r", data_dir=None).to_dict()))
    before = (run / "config.json").read_text()
    cmd = [sys.executable, "-m", "mtbert", "train", "--no-progress", "--resume", str(run)]
    env = {**os.environ, "MTBERT_RUNS_DIR": str(tmp_path / "runs")}
    r = subprocess.run(cmd + ["--epochs", "3", "--lr", "0.001"], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--resume can only change epochs, max_steps, time_budget_s, eval_every, " \
                                 "device, bf16_cpu; not lr" in r.stderr, r.stderr
    assert (run / "config.json").read_text() == before
    r = subprocess.run(cmd + ["--epochs", "3", "--device", "cpu"], cwd=REPO, capture_output=True, text=True, env=env)
    assert "--resume can only change" not in r.stderr and "no saved state" in r.stderr, r.stderr
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
