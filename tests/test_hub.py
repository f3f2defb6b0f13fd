"""Hub push and pull against a stand-in Hub on 127.0.0.1 (tests/hub_stub.py): the exact files and
model card that are sent, a pulled checkpoint predicting exactly as the pushed one, the CLI in a
subprocess pointed at the stand-in with HF_ENDPOINT, and the token never showing anywhere."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hub_stub import HubStub, point_huggingface_hub_at
from mtbert import hub
from mtbert.checkpoint import CheckpointError, load_checkpoint, load_encoder, save_checkpoint
from mtbert.data import Example, make_batch
from mtbert.model import ModelConfig, MultitaskBert

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_TestToken0123456789abcdefSECRET"
METRICS = {"dev": {"para_acc": 0.7125, "sst_acc": 0.4375, "sts_corr": 0.5312, "average": 0.6059},
           "train": {"para_acc": 0.8, "sst_acc": 0.55, "sts_corr": 0.75, "average": 0.7},
           "step": 42}
TRAIN_CONFIG = {"name": "tiny", "base_model": "minilm-l6", "tasks": ["sst", "para", "sts"],
                "gradient_method": "pcgrad", "lr": 2e-5, "batch_size": 8, "epochs": 3,
                "data_dir": "/home/someone/private/data/cs224n", "seed": 11711}


@pytest.fixture(scope="module")
def checkpoint(tiny_base, tmp_path_factory) -> Path:
    """A trained-looking checkpoint: the tiny encoder, seeded heads, metrics, the trainer's state."""
    encoder, tok = load_encoder(tiny_base)
    torch.manual_seed(3)
    model = MultitaskBert(encoder, ModelConfig(pooling="mean"))
    folder = save_checkpoint(model, tok, tmp_path_factory.mktemp("ck") / "best", base="minilm-l6",
                             metrics=METRICS,
                             extra={"run_id": "20261125-tiny", "step": 42, "train_config": TRAIN_CONFIG})
    (folder / "trainer_state.json").write_text("{}")
    (folder / "trainer_state.safetensors").write_bytes(b"not sent")
    return folder


@pytest.fixture
def stub_hub(monkeypatch, tmp_path):
    """The stand-in Hub, with huggingface_hub in this process pointed at it."""
    with HubStub(token=TOKEN) as server:
        point_huggingface_hub_at(monkeypatch, server.url, tmp_path)
        yield server


def _predictions(model, tok) -> dict[str, torch.Tensor]:
    pairs = [Example("0", "How do I learn to cook?", "What is the best way to learn cooking?", None),
             Example("1", "The cat sat.", "Stocks fell sharply today.", None)]
    singles = [Example("0", "A gorgeous, witty, seductive movie.", None, None),
               Example("1", "Dull and overlong.", None, None)]
    with torch.inference_mode():
        return {"sst": model.predict("sst", make_batch("sst", singles, tok)),
                "para": model.predict("para", make_batch("para", pairs, tok, model.cfg.encoding("para"))),
                "sts": model.predict("sts", make_batch("sts", pairs, tok, model.cfg.encoding("sts")))}


def _front_matter_and_text(readme: bytes):
    from huggingface_hub import ModelCard
    card = ModelCard(readme.decode("utf-8"))
    return card.data, card.text


# ---- push -----------------------------------------------------------------------------------

def test_push_sends_the_checkpoint_files_and_a_model_card(stub_hub, checkpoint):
    url = hub.push_checkpoint(checkpoint, "tester/tiny-mtbert", token=TOKEN, commit_message="first push")
    assert url == f"{stub_hub.url}/tester/tiny-mtbert"
    repo = stub_hub.repo("tester/tiny-mtbert")
    local = {f.name: f.read_bytes() for f in checkpoint.iterdir() if not f.name.startswith("trainer_state")}
    assert set(repo.files) == set(local) | {"README.md"}  # exactly these: no resume state, nothing extra
    assert {n: repo.files[n] for n in local} == local  # byte for byte
    assert repo.messages == ["first push"] and repo.private is False

    data, text = _front_matter_and_text(repo.files["README.md"])
    assert data.library_name == "mtbert" and data.license == hub.DEFAULT_LICENSE
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"mtbert", "multitask", "pcgrad"} <= set(data.tags)
    sent = {(r.task_name, r.metric_type): r.metric_value for r in data.eval_results}
    dev = METRICS["dev"]
    assert sent == {("SST", "accuracy"): dev["sst_acc"], ("Paraphrase", "accuracy"): dev["para_acc"],
                    ("STS", "pearsonr"): dev["sts_corr"]}
    # the seed's table: Paraphrase acc | SST acc | STS corr | Average, a Train and a Dev row
    assert "| Paraphrase acc | SST acc | STS corr | Average |" in text
    for name, m in (("Train", METRICS["train"]), ("Dev", dev)):
        row = f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in ("para_acc", "sst_acc", "sts_corr", "average"))
        assert row + " |" in text
    assert "| gradient_method | `pcgrad` |" in text and "| lr | `2e-05` |" in text
    assert "/home/someone" not in text  # the author's paths stay private; the folder name is enough
    assert 'load_checkpoint("tester/tiny-mtbert")' in text
    assert 'BertModel.from_pretrained("tester/tiny-mtbert")' in text


def test_second_push_updates_the_existing_repo(stub_hub, checkpoint, tmp_path):
    hub.push_checkpoint(checkpoint, "tester/again", token=TOKEN, private=True)
    changed = tmp_path / "ck"
    changed.mkdir()
    for f in hub.checkpoint_files(checkpoint):
        changed.joinpath(f.name).write_bytes(f.read_bytes())
    (changed / "metrics.json").write_text(json.dumps({"dev": {"sst_acc": 0.5, "average": 0.5}}))
    url = hub.push_checkpoint(changed, "tester/again", token=TOKEN)  # the repo exists: 409, then upload
    repo = stub_hub.repo("tester/again")
    assert url.endswith("/tester/again") and len(repo.commits) == 2 and repo.private is True
    assert json.loads(repo.files["metrics.json"]) == {"dev": {"sst_acc": 0.5, "average": 0.5}}
    data, text = _front_matter_and_text(repo.files["README.md"])
    assert [(r.task_name, r.metric_value) for r in data.eval_results] == [("SST", 0.5)]
    assert "| Dev | – | 0.500 | – | 0.500 |" in text and "| Train |" not in text


def test_a_folder_replaced_during_the_push_is_read_again(stub_hub, checkpoint, tmp_path, monkeypatch):
    """The trainer swaps a whole new best/ in (save_checkpoint renames folders); a push reading the
    old one at that moment starts over, so what is sent is one version, never a mix."""
    folder = tmp_path / "best"
    shutil.copytree(checkpoint, folder)
    real, calls = hub.checkpoint_files, []

    def files_then_swap(f):
        out = real(f)
        if not calls:
            new, old = tmp_path / ".best.new", tmp_path / ".best.old"
            shutil.copytree(folder, new)
            (new / "metrics.json").write_text('{"dev": {"average": 0.9}}')
            os.replace(folder, old)
            os.replace(new, folder)
            shutil.rmtree(old)
        calls.append(f)
        return out

    monkeypatch.setattr(hub, "checkpoint_files", files_then_swap)
    hub.push_checkpoint(folder, "tester/swapped", token=TOKEN)
    assert len(calls) == 2
    assert json.loads(stub_hub.repo("tester/swapped").files["metrics.json"]) == {"dev": {"average": 0.9}}


def test_card_of_a_checkpoint_without_training_records(tiny_base, tmp_path):
    encoder, tok = load_encoder(tiny_base)
    folder = save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, tmp_path / "plain", base=str(tiny_base))
    data, text = _front_matter_and_text(str(hub.model_card(folder, "me/plain")).encode())
    assert data.base_model is None  # a local folder is no Hub id
    assert f"a local BERT folder ({tiny_base.name})" in text and str(tiny_base.parent) not in text
    assert "No evaluation was recorded" in text and data.eval_results is None


# ---- pull -----------------------------------------------------------------------------------

def test_pull_by_repo_id_predicts_exactly_as_the_pushed_checkpoint(stub_hub, checkpoint, monkeypatch):
    hub.push_checkpoint(checkpoint, "tester/roundtrip", token=TOKEN, private=True)
    with pytest.raises(CheckpointError, match="not found .*or private and no HF_TOKEN"):
        load_checkpoint("tester/roundtrip")  # private, and no token yet
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pulled, tok, meta = load_checkpoint("tester/roundtrip")
    folder = Path(meta["path"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "heads.safetensors", "metrics.json",
                                                        "model.safetensors", "mtbert.json", "tokenizer.json"]
    assert meta["metrics"] == METRICS and meta["model"]["pooling"] == "mean"
    local, local_tok, _ = load_checkpoint(checkpoint)
    want, got = _predictions(local, local_tok), _predictions(pulled, tok)
    for task in want:
        assert torch.equal(want[task], got[task]), task

    # what the card promises: transformers reads the pulled encoder and tokenizer
    from transformers import AutoTokenizer, BertModel
    assert BertModel.from_pretrained(str(folder)).config.hidden_size == local.encoder.config.hidden_size
    text = "A gorgeous, witty, seductive movie."
    assert AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"] == tok._tk.encode(text).ids


def test_pull_of_a_missing_repo_is_a_clear_error(stub_hub):
    with pytest.raises(CheckpointError, match="tester/nothing-here: not found"):
        load_checkpoint("tester/nothing-here")


# ---- errors and the token ---------------------------------------------------------------------

def _closed_port_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_token_comes_from_hf_token_and_goes_only_into_the_auth_header(stub_hub, checkpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.push_checkpoint(checkpoint, "tester/env-token")
    authed = [r for r in stub_hub.requests if r.headers.get("authorization") == f"Bearer {TOKEN}"]
    assert len(authed) >= 3  # create, preupload, commit: the token was used
    bodies = b"".join(r.body for r in stub_hub.requests) + b"".join(stub_hub.repo("tester/env-token").files.values())
    assert TOKEN.encode() not in bodies
    assert b"hf_TestToken" not in bodies


def test_refused_token_is_a_clear_error_without_the_token(checkpoint, monkeypatch, tmp_path):
    import huggingface_hub.constants as C

    wrong = "hf_WrongToken9876543210zyxwvuSECRET"
    with HubStub(token=TOKEN, echo_auth=True) as server:  # even a server quoting it back
        monkeypatch.setattr(C, "ENDPOINT", server.url)
        monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
        with pytest.raises(hub.HubError) as e:
            hub.push_checkpoint(checkpoint, "tester/refused", token=wrong)
    assert any(r.headers.get("authorization") == f"Bearer {wrong}" for r in server.requests)
    assert "401" in str(e.value) and "token" in str(e.value)
    assert "Invalid credentials in Authorization header (Bearer ***)" in str(e.value)  # the Hub's words, scrubbed
    assert wrong not in str(e.value) and e.value.__cause__ is None and e.value.__context__ is None
    assert wrong not in repr(e.value.args)


def test_unreachable_hub_is_a_clear_error(checkpoint, monkeypatch):
    import huggingface_hub.constants as C

    url = _closed_port_url()
    monkeypatch.setattr(C, "ENDPOINT", url)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    with pytest.raises(hub.HubError, match=f"cannot reach the Hub at {url}") as e:
        hub.push_checkpoint(checkpoint, "tester/nowhere", token=TOKEN)
    assert TOKEN not in str(e.value)


def test_offline_mode_and_missing_token_are_explained(checkpoint, monkeypatch, tmp_path):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE"):
        hub.push_checkpoint(checkpoint, "tester/offline", token=TOKEN)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(C, "HF_TOKEN_PATH", str(tmp_path / "none"))
    with pytest.raises(hub.HubError, match="no Hugging Face token: set HF_TOKEN"):
        hub.push_checkpoint(checkpoint, "tester/offline")


def test_bad_folders_and_repo_ids_are_refused_before_any_request(checkpoint, tmp_path):
    with pytest.raises(hub.HubError, match="no such checkpoint folder"):
        hub.push_checkpoint(tmp_path / "missing", "tester/x", token=TOKEN)
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.HubError, match="not an mtbert checkpoint"):
        hub.push_checkpoint(tmp_path / "empty", "tester/x", token=TOKEN)
    for bad in ("no-namespace", "a/b/c", "tester/bad name", "../x"):
        with pytest.raises(hub.HubError, match="--repo-id"):
            hub.push_checkpoint(checkpoint, bad, token=TOKEN)
    linked = tmp_path / "linked"
    linked.mkdir()
    for f in hub.checkpoint_files(checkpoint):
        (linked / f.name).write_bytes(f.read_bytes())
    (linked / "notes.txt").symlink_to("/etc/hostname")
    with pytest.raises(hub.HubError, match="notes.txt: is a symbolic link"):
        hub.push_checkpoint(linked, "tester/x", token=TOKEN)


# ---- command line ---------------------------------------------------------------------------

def _push_command() -> list[str]:
    """`python -m mtbert push` once mtbert/cli.py registers it; `python -m mtbert.hub push` until then."""
    from mtbert.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return [sys.executable, "-m", "mtbert" if "push" in sub.choices else "mtbert.hub", "push"]


def test_cli_push_in_a_subprocess_pointed_at_the_stand_in_hub(checkpoint, tmp_path):
    with HubStub(token=TOKEN) as server:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)}
        env.pop("TRANSFORMERS_OFFLINE", None)
        ok = subprocess.run([*_push_command(), "--checkpoint", str(checkpoint), "--repo-id", "tester/from-cli",
                             "--private", "--message", "pushed from the CLI"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"{server.url}/tester/from-cli" in ok.stdout
    repo = server.repo("tester/from-cli")
    assert repo.private and repo.messages == ["pushed from the CLI"]
    assert set(repo.files) == {f.name for f in hub.checkpoint_files(checkpoint)} | {"README.md"}
    assert TOKEN not in ok.stdout + ok.stderr


def test_cli_push_failure_is_one_line_and_an_exit_code(stub_hub, checkpoint, monkeypatch, capsys):
    wrong = "hf_not_the_right_one_SECRET"
    stub_hub.echo_auth = True
    monkeypatch.setenv("HF_TOKEN", wrong)
    assert hub.main(["push", "--checkpoint", str(checkpoint), "--repo-id", "tester/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: push to tester/x failed: the token was refused (401)")
    assert "Bearer ***" in err  # the stand-in quoted the token back; it was scrubbed
    assert wrong not in err and "Traceback" not in err
    assert hub.main(["push", "--checkpoint", str(checkpoint.parent / "nope"), "--repo-id", "tester/x"]) == 1
    assert "no such checkpoint folder" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        hub.main(["push", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--checkpoint", "--repo-id", "--private", "--message", "HF_TOKEN"):
        assert flag in out


# ---- Hub checkpoints for a Space ----------------------------------------------------------------

def test_hub_checkpoints_setting(monkeypatch):
    monkeypatch.delenv(hub.HUB_CHECKPOINT_ENV, raising=False)
    assert hub.hub_checkpoints() == []
    monkeypatch.setenv(hub.HUB_CHECKPOINT_ENV, " me/best , org/other,,me/best ")
    assert hub.hub_checkpoints() == ["me/best", "org/other"]
    monkeypatch.setenv(hub.HUB_CHECKPOINT_ENV, "me/best,not a repo")
    with pytest.raises(hub.HubError, match="'not a repo' is not a Hub model repo id"):
        hub.hub_checkpoints()
