"""Encoder speed: our BertModel against transformers.BertModel, same MiniLM weights, same batches.

    python benchmarks/encoder.py                 # full run, rewrites the "## Encoder" section of docs/benchmarks.md
    python benchmarks/encoder.py --quick         # smoke run, a few seconds of timing
    python benchmarks/encoder.py --device cuda   # adds bf16 autocast rows

Batches are real SST sentences (singles) and Quora question pairs, tokenised by our tokenizer with
dynamic padding (to the longest item of each batch), exactly what the trainer feeds the encoder.
Both models run with the same thread count; their repetitions alternate (see common.interleaved).
The reference runs with its default attention (SDPA), its fastest CPU path.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference loads from the local folder only
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from mtbert.checkpoint import load_base, resolve_base  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--base-model", default="minilm-l6",
                   help="the packaged MiniLM, or a folder holding the same weights (e.g. a float16 copy)")
    p.add_argument("--threads", default="1",
                   help="torch.set_num_threads for both models; a comma list (1,2) runs each in turn. Default 1: "
                        "on a shared machine a second thread waits for a busy core at every op, which is noise")
    p.add_argument("--reps", type=int, default=9, help="timed repetitions per model (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions per model first")
    p.add_argument("--batches", type=int, default=3, help="distinct batches per repetition")
    p.add_argument("--infer-batch", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128, help="tokenizer truncation")
    p.add_argument("--data-dir", default=str(common.DATA), help="the CS224N files (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: reps 3, warmup 1, batches 1")
    p.add_argument("--out", default=str(common.DOC), help="markdown file whose '## Encoder' section is rewritten")
    a = p.parse_args(argv)
    a.threads = [int(t) for t in str(a.threads).split(",")]
    if a.quick:
        a.reps, a.warmup, a.batches = min(a.reps, 3), min(a.warmup, 1), min(a.batches, 1)
    return a


def make_batches(tok, kind: str, batch_size: int, n_batches: int, device: str, data_dir) -> list[dict]:
    n = batch_size * n_batches
    if kind == "sst":
        texts, pairs = common.sst_sentences(n, data_dir=data_dir), None
    else:
        qp = common.quora_pairs(n, data_dir=data_dir)
        texts, pairs = [a for a, _ in qp], [b for _, b in qp]
    out = []
    for i in range(0, n, batch_size):
        enc = tok.encode(texts[i:i + batch_size], None if pairs is None else pairs[i:i + batch_size])
        out.append({k: v.to(device) for k, v in enc.items()})
    return out


def shape(batches: list[dict]) -> str:
    B = batches[0]["input_ids"].size(0)
    T = sum(b["input_ids"].size(1) for b in batches) / len(batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return f"{B} x {T:.0f} ({100 * (1 - real / total):.0f}% pad)"


def infer_fn(model, batches, pooled, amp):
    def run():
        with torch.inference_mode(), amp():
            for b in batches:
                pooled(model(b["input_ids"], b["attention_mask"], b["token_type_ids"]))
    return run


def train_fn(model, batches, pooled, amp):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def run():
        for b in batches:
            with amp():
                loss = pooled(model(b["input_ids"], b["attention_mask"], b["token_type_ids"])).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return run


def main(argv=None) -> list[list[str]]:
    a = parse_args(argv)
    torch.manual_seed(0)
    import transformers

    ours, tok = load_base(a.base_model, max_length=a.max_length)
    ref = transformers.BertModel.from_pretrained(str(resolve_base(a.base_model)), local_files_only=True,
                                                 dtype=torch.float32)
    models = {"ours": ours.to(a.device).eval(), "ref": ref.to(a.device).eval()}
    # training copies, so that the optimiser steps never touch the inference models
    trained = {k: copy.deepcopy(m).train() for k, m in models.items()}
    pooled = lambda out: out.pooler_output  # noqa: E731  (both return the tanh pooler output)

    amps = {"fp32": contextlib.nullcontext}
    if a.device.startswith("cuda"):
        amps["bf16 autocast"] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)

    header = ["case", "threads", "precision", "batch (B x mean T)", "ours ms/batch", "reference ms/batch",
              "ratio ref/ours"]
    rows = []
    load_before = common.load_average()
    for threads in a.threads:
        torch.set_num_threads(threads)
        for mode in ("inference", "train step"):
            for data in ("sst", "quora"):
                bs = a.infer_batch if mode == "inference" else a.train_batch
                batches = make_batches(tok, data, bs, a.batches, a.device, a.data_dir)
                for prec, amp in amps.items():
                    if mode == "inference":
                        fns = {k: infer_fn(m, batches, pooled, amp) for k, m in models.items()}
                    else:
                        fns = {k: train_fn(m, batches, pooled, amp) for k, m in trained.items()}
                    t = common.interleaved(fns, a.reps, a.warmup, a.device)
                    mo, mr = (common.median(t[k]) / len(batches) for k in ("ours", "ref"))
                    label = f"{mode}, {'SST singles' if data == 'sst' else 'Quora pairs'}"
                    rows.append([label, str(threads), prec, shape(batches), f"{1e3 * mo:.1f}", f"{1e3 * mr:.1f}",
                                 f"{mr / mo:.2f}x"])
                    print(" | ".join(rows[-1]), flush=True)

    table = common.markdown_table(header, rows)
    cmd = common.command("benchmarks/encoder.py", argv if argv is not None else sys.argv[1:])
    weights = ("the packaged all-MiniLM-L6-v2 weights" if a.base_model == "minilm-l6"
               else f"the all-MiniLM-L6-v2 weights in `{Path(a.base_model).name}`")
    body = (f"Our `mtbert.bert.BertModel` against `transformers.BertModel` ({transformers.__version__}, "
            f"default SDPA attention), both on {weights}; real SST and Quora "
            f"batches tokenised by our tokenizer with dynamic padding. Inference under "
            f"`torch.inference_mode`; a train step is forward, a loss on the pooled output, backward and "
            f"an AdamW step (dropout on). Median of {a.reps} interleaved repetitions of {a.batches} "
            f"batches each, after {a.warmup} warm-up; ratio > 1 means ours is faster.\n\n"
            f"Where ours gains: outside attention it runs on the real tokens only (`Unpadding` in "
            f"`mtbert/bert.py`), and dynamic padding still leaves a third to two thirds of a batch "
            f"as padding (the `pad` column). The fixed costs of a train step (the AdamW update of "
            f"all 22.7 M weights, the embedding gradient) are the same for both, so train-step "
            f"ratios are lower than inference ratios.\n\n"
            f"{table}\n\n"
            f"- command: `{cmd}`\n"
            f"- machine: {common.machine(a.device, ','.join(map(str, a.threads)))}\n"
            f"- 1-minute load average before / after: {load_before} / {common.load_average()} "
            f"(a load above the number of cores means other work competed for them: noisy timings)\n"
            f"- date: {common.today()}\n"
            f"- commit: {common.commit()}\n")
    print()
    print(table)
    # one section per device kind, so a GPU run leaves the CPU table in place
    heading = "Encoder" if a.device == "cpu" else f"Encoder ({a.device})"
    common.write_section(a.out, heading, body)
    print(f"\nwrote the '## {heading}' section of {a.out}")
    return rows


if __name__ == "__main__":
    main()
