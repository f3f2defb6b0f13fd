"""Training speed of an adapter recipe on the CPU: bf16 autocast and the adapters' dropout.

    python benchmarks/lora_step.py            # configs/minilm-lora-per-task-members-60min.yaml

Each variant is a Trainer built from the recipe's config with two settings changed, bf16_cpu and
lora_dropout, and timed on its own `_train_step` (one task's batch, forward, PCGrad backward, AdamW,
the weight average: what a run does per step). All variants draw the same batches (the same seed)
and are timed alternately in the same run. The "recipe mix" row weighs each task's median step by
the probability the recipe's schedule draws it, i.e. the time of an average step of the hour run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (DOC, command, commit, interleaved, load_average, machine, markdown_table,  # noqa: E402
                               median, today, write_section)
from mtbert import runfolder  # noqa: E402
from mtbert.config import TrainConfig, read_config_file  # noqa: E402
from mtbert.data import FULL_DATA_DIR  # noqa: E402
from mtbert.train import Trainer  # noqa: E402

# (label, bf16_cpu, lora_dropout); the first is the reference the ratios divide by
VARIANTS = [("fp32, adapter dropout 0.1", False, 0.1), ("bf16 autocast, adapter dropout 0.1", True, 0.1),
            ("fp32, no adapter dropout", False, 0.0), ("bf16 autocast, no adapter dropout", True, 0.0)]


def trainer(settings: dict, folder: Path, quiet=lambda msg: None) -> Trainer:
    tr = Trainer(TrainConfig(**settings), folder, progress=False, log=quiet)
    tr._setup()
    folder.mkdir(parents=True)
    tr.metrics = runfolder.MetricsWriter(folder)
    return tr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/minilm-lora-per-task-members-60min.yaml")
    ap.add_argument("--reps", type=int, default=12, help="timed steps per task and variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--data-dir", default=str(FULL_DATA_DIR), help="the CS224N files (default: %(default)s)")
    ap.add_argument("--quora-train", default=None, help="another Quora train file, as `train --quora-train`")
    ap.add_argument("--out", default=str(DOC), help="markdown file whose section is rewritten")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = {**read_config_file(args.config), "data_dir": args.data_dir, "device": "cpu", "quora_train": args.quora_train}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {label: trainer({**base, "bf16_cpu": bf16, "lora_dropout": drop}, Path(tmp) / str(i))
                    for i, (label, bf16, drop) in enumerate(VARIANTS)}
        first = next(iter(trainers.values()))
        tasks, share = first.cfg.tasks, first.plan.probabilities()
        times = {}
        for t in tasks:
            times[t] = interleaved({label: (lambda tr=tr, t=t: tr._train_step([t])) for label, tr in trainers.items()},
                                   args.reps, args.warmup)
    load = load_average()
    ref = VARIANTS[0][0]
    mix = {label: sum(share[t] * median(times[t][label]) for t in tasks) for label in trainers}
    rows = []
    for label in trainers:
        cells = [f"{median(times[t][label]) * 1000:.0f} ({median(times[t][ref]) / median(times[t][label]):.2f}x)"
                 for t in tasks]
        rows.append([label, *cells, f"{mix[label] * 1000:.0f} ({mix[ref] / mix[label]:.2f}x)"])
    table = markdown_table(["variant", *[f"{t} step, ms (speed-up)" for t in tasks], "recipe mix, ms (speed-up)"],
                           rows)
    print(table)
    shown_command = command("benchmarks/lora_step.py", argv if argv is not None else sys.argv[1:])
    if args.quora_train:  # the file by its name: where it lies on this machine says nothing about the speed
        shown_command = shown_command.replace(args.quora_train, Path(args.quora_train).name)
    body = (f"{table}\n\nRecipe: `{args.config}` ({', '.join(f'{t} drawn {share[t]:.2f}' for t in tasks)}), "
            f"each variant changing only `bf16_cpu` and `lora_dropout`. Medians of {args.reps} interleaved steps "
            f"per task after {args.warmup} warm-up; speed-up = the reference's median / the variant's.\n\n"
            "Where the time goes: on the CPU, drawing a dropout mask costs about as much as a 384 x 384 "
            "matmul over the same activations, and the adapters draw one for each of the six adapted "
            "projections of every layer, on top of the encoder's own dropout; bf16 autocast halves the "
            "matmuls on CPUs with AVX-512 BF16 or AMX and leaves the masks as they are.\n\n"
            f"Machine: {machine('cpu', str(args.threads))}. 1-minute load average after: {load}. "
            f"Measured {today()}, commit {commit()}.\n\n"
            f"Command: `{shown_command}`")
    write_section(args.out, "Training step: adapter recipe, bf16 autocast and adapter dropout (minilm, cpu)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
