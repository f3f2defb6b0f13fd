"""Evaluation speed: the whole CS224N dev set (SST, Quora, STS) through a checkpoint, by path and precision.

    python benchmarks/evaluate.py            # full run, rewrites the "## Evaluation" section of docs/benchmarks.md
    python benchmarks/evaluate.py --quick    # smoke run: 300 examples per task, one repetition

Four measurements, all on the shipped checkpoint (heads over the packaged MiniLM-L6) by default:
1. the full dev evaluation, timed end to end (tokenising included): the per-batch loop evaluation
   used before (kept below as `predict_raw_before`), and today's `mtbert.evaluate.predict_raw` in
   fp32, int8 and bf16 (`mtbert.quantize`); repetitions interleaved (common.interleaved);
2. each task's main metric per precision, and its difference to fp32;
3. encoder throughput in sentences/s on the same length-sorted batches of distinct dev sentences:
   ours (each precision) against `transformers.BertModel` (fp32, its default SDPA attention);
4. Playground latency through `mtbert.studio.playground.task_answer`: one sentence (or pair) per
   call, p50/p95, from one session and from 8 sessions asking at once (8 threads, each waiting for
   its answer before asking again, as 8 Streamlit sessions would).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference loads from the local folder only
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from mtbert.data import example_length, load_split, make_batch  # noqa: E402
from mtbert.evaluate import _distinct, predict_raw, task_metrics  # noqa: E402
from mtbert.quantize import PRECISIONS, for_inference  # noqa: E402

CHECKPOINT = common.ROOT / "checkpoints" / "minilm-l6-heads"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(CHECKPOINT), help="checkpoint folder (default: the shipped one)")
    p.add_argument("--data-dir", default=str(common.DATA), help="the CS224N files (default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="timed full evaluations per variant (median reported)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch of today's path")
    p.add_argument("--before-batch-size", type=int, default=64, help="evaluation batch of the loop used before")
    p.add_argument("--limit", type=int, help="only the first N examples per task")
    p.add_argument("--encoder-sentences", type=int, default=2048, help="distinct dev sentences for the sentences/s rows")
    p.add_argument("--latency-calls", type=int, default=40, help="Playground calls per task from one session")
    p.add_argument("--sessions", type=int, default=8, help="concurrent Playground sessions")
    p.add_argument("--session-calls", type=int, default=12, help="calls per concurrent session")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own, one per core). On a "
                   "machine other work keeps busy, 1 thread is the steadier measure: with 2, every op waits for "
                   "the second core to be free")
    p.add_argument("--quick", action="store_true", help="smoke run: --limit 300, reps 1, fewer latency calls")
    p.add_argument("--out", default=str(common.DOC), help="markdown file whose '## Evaluation' section is rewritten")
    a = p.parse_args(argv)
    if a.quick:
        a.limit, a.reps = a.limit or 300, 1
        a.encoder_sentences, a.latency_calls, a.session_calls = 256, 8, 3
    if not (Path(a.data_dir) / "quora-dev.csv").is_file():
        p.error(f"--data-dir {a.data_dir}: no quora-dev.csv there; fetch the CS224N files with "
                "`python -m mtbert data fetch` or name their folder")
    return a


@torch.inference_mode()
def predict_raw_before(model, tokenizer, task, examples, batch_size=64):
    """The evaluation loop as it was: batches sorted by characters, each pair's two sentences encoded
    in every pair, one make_batch and one model.predict per batch."""
    order = sorted(range(len(examples)), key=lambda i: example_length(examples[i]))
    outs = [model.predict(task, make_batch(model.cfg.task(task), [examples[i] for i in order[s:s + batch_size]],
                                           tokenizer)).float()
            for s in range(0, len(order), batch_size)]
    flat = torch.cat(outs).numpy()
    result = np.empty_like(flat)
    result[np.array(order)] = flat
    return result


def percentiles(xs: list[float]) -> str:
    return f"{1e3 * np.percentile(xs, 50):.0f} / {1e3 * np.percentile(xs, 95):.0f}"


def full_eval(a, model, tok, data):
    """Timed full evaluations per variant, and each variant's raw outputs (of its last repetition)."""
    models = {p: for_inference(model, p, tokenizer=tok) for p in PRECISIONS}
    variants = {f"before: per-batch loop, fp32, batch {a.before_batch_size}":
                lambda t, ex: predict_raw_before(models["fp32"], tok, t, ex, a.before_batch_size)}
    variants.update({f"predict_raw, {p}, batch {a.batch_size}":
                     (lambda p: lambda t, ex: predict_raw(models[p], tok, t, ex, a.batch_size))(p) for p in PRECISIONS})
    raws = {v: {} for v in variants}

    def runner(v):
        def run():
            for t, ex in data.items():
                raws[v][t] = variants[v](t, ex)
        return run
    times = common.interleaved({v: runner(v) for v in variants}, a.reps, 0)
    return models, times, raws


def encoder_rows(a, models, tok, data, reference):
    """sentences/s of each encoder on the same length-sorted batches of distinct dev sentences."""
    texts = [t for ex in data.values() for e in ex for t in (e.text_a, e.text_b) if t]
    distinct, _ = _distinct(texts)
    picked = [distinct[i] for i in np.random.default_rng(0).permutation(len(distinct))[:a.encoder_sentences]]
    enc = tok.encode(picked)
    lengths = enc["attention_mask"].sum(1)
    order = torch.sort(lengths, stable=True).indices
    batches = [{k: v[idx, :int(lengths[idx[-1]])] for k, v in enc.items()}
               for idx in order.split(a.batch_size)]

    def run_with(encoder):
        def run():
            with torch.inference_mode():
                for b in batches:
                    encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        return run
    fns = {f"ours, {p}": run_with(m.encoder) for p, m in models.items()}
    fns["transformers.BertModel, fp32"] = run_with(reference)
    times = common.interleaved(fns, a.reps, 1)
    tokens = int(lengths.sum())
    ours32 = common.median(times["ours, fp32"])
    return [[k, f"{len(picked) / common.median(t):,.0f}", f"{tokens / common.median(t):,.0f}",
             f"{ours32 / common.median(t):.2f}x"] for k, t in times.items()], len(picked), tokens


def latency_rows(a, checkpoint, data):
    from mtbert.studio import playground as pg
    inputs = {t: [(e.text_a, e.text_b) for e in ex[:max(a.latency_calls, a.sessions * a.session_calls)]]
              for t, ex in data.items()}
    rows = []
    for precision in ("fp32", "int8", "bf16"):
        model, tok, _ = pg.load_model(checkpoint, precision=precision)
        one = {}
        for t, xs in inputs.items():
            pg.task_answer(model, tok, t, *xs[0])  # warm-up
            lat = []
            for x in xs[:a.latency_calls]:
                s = time.perf_counter()
                pg.task_answer(model, tok, t, *x)
                lat.append(time.perf_counter() - s)
            one[t] = lat
        tasks = list(inputs)
        concurrent, lock = [], threading.Lock()

        def session(k):
            for i in range(a.session_calls):
                t = tasks[(k + i) % len(tasks)]
                x = inputs[t][(k * a.session_calls + i) % len(inputs[t])]
                s = time.perf_counter()
                pg.task_answer(model, tok, t, *x)
                with lock:
                    concurrent.append(time.perf_counter() - s)
        threads = [threading.Thread(target=session, args=(k,)) for k in range(a.sessions)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
        rows.append([precision, *(percentiles(one[t]) for t in tasks), percentiles(concurrent),
                     f"{len(concurrent) / wall:.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    return tasks, rows


def main(argv=None):
    a = parse_args(argv)
    import transformers

    from mtbert.checkpoint import load_checkpoint, resolve_base
    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    uptime_before = common.load_average()
    model, tok, meta = load_checkpoint(a.checkpoint)
    loaded = load_split(a.data_dir, "dev", model.cfg.tasks)
    data = {t: ex[:a.limit] if a.limit else ex for t, (ex, _) in loaded.items()}
    sizes = ", ".join(f"{len(ex):,} {t}" for t, ex in data.items())
    specs = {t: model.cfg.task(t) for t in data}

    models, times, raws = full_eval(a, model, tok, data)
    names = list(times)
    fp32 = names[1]  # today's path in fp32: the exact numbers the others are compared with
    eval_rows = [[v, f"{common.median(times[v]):.1f}", f"{common.median(times[names[0]]) / common.median(times[v]):.2f}x",
                  f"{max(float(np.abs(raws[v][t] - raws[fp32][t]).max()) for t in data):.1e}"] for v in names]
    metric_rows = []
    for v in names[1:]:
        m = {t: task_metrics(specs[t], raws[v][t], data[t])[specs[t].main_key] for t in data}
        m32 = {t: task_metrics(specs[t], raws[fp32][t], data[t])[specs[t].main_key] for t in data}
        metric_rows.append([v.split(", ")[1], *(f"{m[t]:.4f} ({m[t] - m32[t]:+.4f})" for t in data)])
    for r in eval_rows + metric_rows:
        print(" | ".join(r), flush=True)

    base = meta.get("base_model") or "minilm-l6"
    reference = transformers.BertModel.from_pretrained(str(resolve_base(base)), local_files_only=True,
                                                       dtype=torch.float32).eval()
    enc_rows, n_sent, n_tok = encoder_rows(a, models, tok, data, reference)
    for r in enc_rows:
        print(" | ".join(r), flush=True)
    tasks, lat_rows = latency_rows(a, a.checkpoint, data)

    cmd = common.command("benchmarks/evaluate.py", argv if argv is not None else sys.argv[1:])
    body = (
        f"The whole dev set ({sizes}) through `{Path(a.checkpoint).name}`, tokenising included; "
        f"median of {a.reps} interleaved repetitions per row. `predict_raw` tokenises everything at once, "
        f"sorts batches by token count and, for a separately encoded pair task, embeds each distinct "
        f"sentence once (Quora dev repeats its questions). int8 is dynamic quantization of the encoder's "
        f"Linear layers (weights per output channel) after SmoothQuant smoothing calibrated on training "
        f"sentences, activations on all 256 levels (weights on 128 where the CPU lacks AVX-512 VNNI); "
        f"bf16 runs the encoder's weights and activations in bf16 (fast where the CPU has AMX or AVX-512 "
        f"BF16). Max |diff| is the largest difference of any output (probability or score) from fp32 "
        f"`predict_raw`.\n\n"
        + common.markdown_table(["evaluation", "seconds", "speed-up vs before", "max |diff| vs fp32"], eval_rows)
        + "\n\nEach task's main metric (difference to fp32):\n\n"
        + common.markdown_table(["precision", *(f"{t}: {specs[t].main_key}" for t in data)], metric_rows)
        + f"\n\nEncoder alone, {n_sent:,} distinct dev sentences ({n_tok:,} tokens) in length-sorted batches of "
        f"{a.batch_size} (the same batches for every row), under `torch.inference_mode`:\n\n"
        + common.markdown_table(["encoder", "sentences/s", "tokens/s", "speed vs ours fp32"], enc_rows)
        + f"\n\nPlayground latency, ms p50 / p95 per answer (`task_answer`, one input each): one session "
        f"asking {a.latency_calls} times per task; {a.sessions} sessions asking at once, "
        f"{a.session_calls} answers each, tasks in turn:\n\n"
        + common.markdown_table(["precision", *(f"{t}, one session" for t in tasks),
                                 f"{a.sessions} sessions at once", "answers/s at once"], lat_rows)
        + f"\n\n- command: `{cmd}`\n"
        f"- machine: {common.machine('cpu')}\n"
        f"- 1-minute load average before / after: {uptime_before} / {common.load_average()} "
        f"(a load above the number of cores means other work competed for them: noisy timings)\n"
        f"- date: {common.today()}\n"
        f"- commit: {common.commit()}\n")
    common.write_section(a.out, "Evaluation", body)
    print(f"\nwrote the '## Evaluation' section of {a.out}")


if __name__ == "__main__":
    main()
