"""Training speed of the multitask step: every gradient method against one plain backward.

    python benchmarks/train.py                                # MiniLM (packaged weights), CPU
    python benchmarks/train.py --model bert-base --reps 4     # bert-base-sized random weights
    python benchmarks/train.py --device cuda                  # + bf16 autocast, fused AdamW

One step = one batch of each task (SST, Quora, STS; the parallel schedule), forward, the gradient
method's backward, AdamW step — exactly what `mtbert.train.Trainer` does per step. The rows:
`sum` without telemetry (one backward of the summed loss: the baseline), `sum` with telemetry
(per-task gradients for the conflict charts, what the trainer runs), and every other method in
`mtbert.methods.METHODS`. They are timed alternately in the same run; the ratios are medians.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (DOC, command, commit, interleaved, load_average, machine, markdown_table,  # noqa: E402
                               median, today, write_section)
from mtbert.bert import BertConfig, BertModel  # noqa: E402
from mtbert.checkpoint import load_base, resolve_base  # noqa: E402
from mtbert.data import FULL_DATA_DIR, load_split, make_batch  # noqa: E402
from mtbert.methods import METHODS, make_method  # noqa: E402
from mtbert.model import ModelConfig, MultitaskBert  # noqa: E402
from mtbert.tasks import BUILTIN_NAMES as TASKS  # noqa: E402
from mtbert.tokenizer import Tokenizer  # noqa: E402

SIZES = {"bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}


def build(model_name: str, max_length: int, base_model: str = "minilm-l6"):
    if model_name == "minilm":
        return load_base(base_model, max_length)
    tok = Tokenizer.from_folder(resolve_base(base_model), max_length)  # same uncased vocab as bert-base
    torch.manual_seed(0)
    return BertModel(BertConfig(**SIZES[model_name])), tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("minilm", "bert-base"), default="minilm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--base-model", default="minilm-l6",
                    help="for --model minilm: the packaged weights, or a folder holding them (e.g. a float16 copy)")
    ap.add_argument("--batch-size", type=int, default=16, help="per task")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--data-dir", default=str(FULL_DATA_DIR), help="the CS224N files (default: %(default)s)")
    ap.add_argument("--out", default=str(DOC), help="markdown file whose '## Training' section is rewritten")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.bfloat16 if device.type == "cuda" else None

    encoder, tok = build(args.model, args.max_length, args.base_model)
    model = MultitaskBert(encoder, ModelConfig.from_dict({"pooling": "mean", "para_features": "concat_diff_prod"})).to(device).train()
    data = {t: ex for t, (ex, _) in load_split(args.data_dir, "dev", TASKS).items()}
    batches = [{t: make_batch(model.cfg.task(t), data[t][i * args.batch_size:(i + 1) * args.batch_size], tok) for t in TASKS}
               for i in range(args.reps + args.warmup)]
    batches = [{t: {k: (v.to(device) if torch.is_tensor(v) else
                        {kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v)
                    for k, v in b.items()} for t, b in bt.items()} for bt in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, **({"fused": True} if device.type == "cuda" else {}))
    methods = {"sum (one backward)": make_method("sum", params, telemetry=False),
               "sum + telemetry": make_method("sum", params, telemetry=True)}
    methods.update({name: make_method(name, params, telemetry=True) for name in METHODS if name != "sum"})
    cursor = {name: 0 for name in methods}

    def step_fn(name):
        def run():
            b = batches[cursor[name] % len(batches)]
            cursor[name] += 1
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                losses = {t: model.loss(t, b[t]).float() for t in TASKS}
            methods[name].backward(losses)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    # one set of (K, P) buffers for all: a method only reads its rows within a step, and 16 sets of
    # bert-base buffers (1.8 GB each) would not fit in memory
    step_fn("sum + telemetry")()
    for m in methods.values():
        if m.telemetry:  # the plain backward keeps no buffers
            m._buf = methods["sum + telemetry"]._buf
    load_before = load_average()
    times = interleaved({n: step_fn(n) for n in methods}, args.reps, args.warmup, args.device)
    load_after = load_average()
    examples = args.batch_size * 5  # sst: 1 sentence per example; para, sts: 2 each
    base = median(times["sum (one backward)"])
    per_step = args.batch_size * len(TASKS)  # training examples: a sentence or a pair each
    grad_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    fastest = min(times["sum (one backward)"])
    pc = median(times["pcgrad"])
    rows = [[n, f"{median(ts) * 1000:.0f}", f"{per_step / median(ts):.1f}", f"{examples / median(ts):.1f}",
             f"{median(ts) / base:.2f}", f"{min(ts) / fastest:.2f}", f"{median(ts) / pc:.2f}",
             f"{max(0.0, methods[n].nbytes / 1e6 - grad_mb):.0f}"] for n, ts in times.items()]
    table = markdown_table(["method", "step time (ms, median)", "examples/s", "sentences/s",
                            "time vs one backward", "fastest vs fastest", "time vs pcgrad",
                            "extra memory (MB)"], rows)
    print(table)
    n_params = sum(p.numel() for p in params) / 1e6
    weights = ("random weights" if args.model != "minilm" else "the packaged weights"
               if args.base_model == "minilm-l6" else f"the weights in `{Path(args.base_model).name}`")
    spread = ", ".join(f"{n} {min(ts) * 1000:.0f}–{max(ts) * 1000:.0f}" for n, ts in times.items())
    body = (f"{table}\n\nModel: {args.model}, {weights} ({n_params:.1f} M trainable parameters), "
            f"batch {args.batch_size} per task (3 tasks, {examples} sentences per step), max length "
            f"{args.max_length}, real CS224N dev sentences, AdamW{', bf16 autocast' if amp else ''}, "
            f"{args.reps} interleaved repetitions after {args.warmup} warm-up (range in ms: {spread}; "
            f"`fastest vs fastest`: the ratio of the fastest steps, less sensitive to other work on a busy "
            f"machine than the medians).\n\n"
            f"Machine: {machine(args.device)}. 1-minute load average before / after: {load_before} / "
            f"{load_after} (above the number of cores, other work competed for them: noisy timings). "
            f"Measured {today()}, commit {commit()}.\n\n"
            f"Command: `{command('benchmarks/train.py', argv if argv is not None else sys.argv[1:])}`")
    over = median(times["pcgrad"]) / median(times["sum + telemetry"])
    body += ("\n\nWhere the time goes: every method but the first needs each task's gradient on the "
             "shared weights, so it runs one backward per task (3) instead of one; the tasks' batches are "
             "separate, so that is the same arithmetic. Each task's backward accumulates straight into its "
             "row of a (K, P) buffer kept from step to step (the parameters' `.grad` point into it), and the "
             "combined update is written into a kept (P,) buffer that the optimizer's `.grad` are views of. "
             "On top of one backward: zeroing the rows, the K x K Gram matrix (one pass over the rows) and "
             "the combination (another pass; for `sum` and the loss weightings, whose weights do not "
             "depend on the Gram matrix, the same pass, chunk by chunk while the K rows are in cache); "
             "for the word embeddings, which the tasks reach by lookups "
             "only, all three touch the looked-up rows alone. A PCGrad step takes "
             f"{over:.2f}x the time of a `sum + telemetry` one. Extra memory: the buffers beyond the "
             f"{grad_mb:.0f} MB of gradients one backward makes anyway, i.e. the K rows. The trainer uses "
             "`sum + telemetry` for `gradient_method: sum` on the steps that record gradient telemetry: every "
             "step by default, one in N with `telemetry_every: N` (the others are `sum (one backward)`).")
    threads = f", {args.threads} thread{'s' if args.threads != 1 else ''}" if args.device == "cpu" else ""
    heading = f"Training step: every method ({args.model}, {args.device}{threads})"
    write_section(args.out, heading, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
