"""The Evaluate page's logic (mtbert.studio.evaluation): what is evaluated, the background job and
its cache; and the Playground's prefill, which the error browser opens an example with."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from mtbert.checkpoint import load_checkpoint, load_encoder, save_checkpoint
from mtbert.data import SAMPLE_DIR
from mtbert.evaluate import predict_raw
from mtbert.model import ModelConfig, MultitaskBert
from mtbert.studio import evaluation as ev
from mtbert.studio import playground as pg
from mtbert.studio.checkpoints import CheckpointRef
from mtbert.tasks import builtin_tasks


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_base):
    encoder, tok = load_encoder(tiny_base, max_length=32)
    torch.manual_seed(0)
    folder = save_checkpoint(MultitaskBert(encoder, ModelConfig()), tok, tmp_path_factory.mktemp("ck") / "best",
                             base=str(tiny_base))
    model, tok, _ = load_checkpoint(folder)
    return folder, model, tok


def test_a_split_source_holds_every_labelled_dev_row_and_its_files_key():
    source = ev.split_source(SAMPLE_DIR, "dev", builtin_tasks(), shown_dir="the sample")
    assert {t: len(x) for t, x in source.data.items()} == {"sst": 200, "para": 200, "sts": 200}
    assert source.size == 600 and source.label == "dev split of the sample"
    assert all(e.label is not None for x in source.data.values() for e in x)
    assert ev.split_source(SAMPLE_DIR, "dev", builtin_tasks()).key == source.key  # same files, same key


def test_a_split_source_refuses_what_it_cannot_evaluate(tmp_path):
    with pytest.raises(pg.InputError, match="split='test' is not allowed; choose one of dev, train"):
        ev.split_source(SAMPLE_DIR, "test", builtin_tasks())
    with pytest.raises(pg.InputError, match="at least one task"):
        ev.split_source(SAMPLE_DIR, "dev", [])
    with pytest.raises(pg.InputError, match="no such file"):  # a folder without the files says which
        ev.split_source(tmp_path, "dev", builtin_tasks())


def test_a_changed_file_is_another_source(tmp_path):
    for f in SAMPLE_DIR.glob("*-dev.csv"):
        shutil.copy(f, tmp_path / f.name)
    before = ev.split_source(tmp_path, "dev", builtin_tasks()[:1]).key
    path = tmp_path / "ids-sst-dev.csv"
    path.write_text(path.read_text(encoding="utf-8").rsplit("\n", 2)[0] + "\n", encoding="utf-8")
    assert ev.split_source(tmp_path, "dev", builtin_tasks()[:1]).key != before


def test_a_file_source_reads_one_task_and_needs_labels():
    content = (SAMPLE_DIR / "sts-dev.csv").read_bytes()
    source = ev.file_source("sts-dev.csv", content, "auto", builtin_tasks())
    assert list(source.data) == ["sts"] and source.size == 200 and source.label == "sts-dev.csv (task sts)"
    assert source.key == ev.file_source("other name.csv", content, "sts", builtin_tasks()).key
    unlabelled = (SAMPLE_DIR / "ids-sst-test-student.csv").read_bytes()
    with pytest.raises(pg.InputError, match="no labelled rows for task sst"):
        ev.file_source("test.csv", unlabelled, "sst", builtin_tasks())
    with pytest.raises(pg.InputError, match="empty"):
        ev.file_source("empty.csv", b"", "sst", builtin_tasks())


def test_a_checkpoint_key_changes_when_its_files_do(tiny, tmp_path):
    folder = shutil.copytree(tiny[0], tmp_path / "copy")
    key = ev.checkpoint_key(str(folder))
    assert ev.checkpoint_key(str(folder)) == key
    (folder / "metrics.json").write_text('{"dev": {}}', encoding="utf-8")
    assert ev.checkpoint_key(str(folder)) != key
    assert ev.checkpoint_key("minilm-l6") == ("name", "minilm-l6")


def test_the_job_predicts_every_task_with_progress_and_is_kept_per_checkpoint_and_data(tiny):
    folder, model, tok = tiny
    source = ev.split_source(SAMPLE_DIR, "dev", builtin_tasks())
    cache = ev.Evaluations(keep=1)
    key = ev.checkpoint_key(str(folder))
    job = cache.start(key, source, model, tok)
    assert cache.start(key, source, model, tok) is job and cache.get(key, source) is job  # no second computation
    job.join(120)
    assert job.finished and job.error is None and job.done == source.size and job.fraction == 1.0
    for task, examples in source.data.items():
        r = job.results[task]
        assert len(r.examples) == len(examples)
        if not model.cfg.task(task).binary:  # the same outputs as the evaluation everywhere else
            np.testing.assert_allclose(r.raw, predict_raw(model, tok, task, examples), atol=1e-6)
    other = ev.file_source("sts.csv", (SAMPLE_DIR / "sts-dev.csv").read_bytes(), "sts", builtin_tasks())
    cache.start(key, other, model, tok).join(120)
    assert cache.get(key, source) is None  # keep=1: the older finished evaluation went


def test_a_failed_job_says_why_and_is_not_kept(tiny):
    folder, model, tok = tiny
    source = ev.split_source(SAMPLE_DIR, "dev", builtin_tasks())
    broken = ev.Source("broken", ("broken",), {"no-such-task": source.data["sst"]})
    cache = ev.Evaluations()
    job = cache.start(("k",), broken, model, tok)
    job.join(60)
    assert job.error and "no-such-task" in job.error
    assert cache.get(("k",), broken) is None


def test_prefill_picks_the_checkpoint_fills_the_task_and_asks_for_the_answer(tiny):
    refs = [CheckpointRef("a", "/x/a", "run", "a"), CheckpointRef("b", "/x/b", "run", "b"), pg.TYPED_PATH]
    state = {"sts_result": {"old": 1}, "compare": True}
    pg.apply_prefill(state, pg.prefill("/x/b", "sts", "A man plays.", "A person plays."), refs)
    assert state["ckpt_a"] == refs[1] and state["compare"] is False
    assert (state["sts_a"], state["sts_b"], state["sts_auto"]) == ("A man plays.", "A person plays.", True)
    assert (state["why_task"], state["why_a"], state["why_b"]) == ("sts", "A man plays.", "A person plays.")
    assert "sts_result" not in state
    state = {}
    pg.apply_prefill(state, pg.prefill("runs/other/best", "sst", "Fine."), refs)
    assert state["ckpt_a"] == pg.TYPED_PATH and state["ckpt_a_path"] == "runs/other/best"
    assert state["sst_text"] == state["why_text"] == "Fine." and state["sst_auto"] is True
    state = {}
    pg.apply_prefill(state, None, refs)
    assert state == {}
