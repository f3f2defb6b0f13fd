"""`python -m mtbert …`: argument parsing only; the work is done by the modules it calls."""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import MISSING, fields
from pathlib import Path



def _add_train(sub) -> None:
    from .config import TrainConfig
    p = sub.add_parser("train", help="fine-tune the multitask model, writing a run folder",
                       description="Train one BERT on SST, Quora and STS at once. Settings come from the "
                                   "defaults (the seed report's), then --config FILE (YAML/JSON), then flags.")
    p.add_argument("--config", help="YAML or JSON file of settings")
    p.add_argument("--run-dir", help="run folder to write (default: runs/<timestamp>-<name>); "
                                     "if it holds a config.json and no --config is given, that config is used")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last/ state")
    p.add_argument("--no-progress", action="store_true", help="no terminal progress bar")
    g = p.add_argument_group("settings (override the config file)")
    for f in fields(TrainConfig):
        if f.name not in NOT_FLAGS:
            g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS, **_flag(f))
    p.set_defaults(func=_cmd_train, _fields=[f.name for f in fields(TrainConfig) if f.name not in NOT_FLAGS])


def _flag(f) -> dict:
    """add_argument's type, choices and help for a setting, from its declaration in TrainConfig."""
    from .config import allowed_values, kind, optional
    m, k, allowed = f.metadata, kind(f), allowed_values(f)
    default = f.default_factory() if f.default is MISSING else f.default
    values = f"allowed: {allowed}; " if allowed and k != "bool" else ""  # --flag/--no-flag says it
    shown = "none" if default in (None, []) else default
    about = f"{m['label']}: {m['help']} ({values}default: {shown})".replace("%", "%%")  # argparse formats %
    if k == "bool":
        return dict(action=argparse.BooleanOptionalAction, help=about)
    # a list is typed comma-separated ("sst,sts", "600,1200") and split by TrainConfig; none: empty
    conv = {"int": int, "float": float}.get(k, str)
    kw = dict(type=_optional(conv) if optional(f) or k == "list" else conv, help=about)
    if m["choices"]:  # refused by argparse, before anything starts
        kw["choices"] = ((None,) if optional(f) else ()) + m["choices"]
        kw["metavar"] = "{" + allowed.replace(", ", ",") + "}"  # `none`, as typed, not None
    elif k == "list":
        kw["metavar"] = "A,B,..."
    return kw


NOT_FLAGS = ("task_definitions",)  # written by the trainer into config.json, not given by hand


def given_settings(args) -> dict:
    """The settings flags given on the command line, and only those (argparse.SUPPRESS keeps the
    others out), so `--time-budget-s none` clears a value the config file set."""
    return {k: v for k, v in vars(args).items() if k in args._fields}


def _optional(conv):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else conv(text)
    parse.__name__ = conv.__name__
    return parse


def resume_refusal(flags: dict) -> str | None:
    """Why --resume cannot take these settings flags (None: it can). Only the settings declared
    resume=True in TrainConfig (the budgets, the device) may change: the rest must match the saved state."""
    from .config import RESUME_SETTINGS
    refused = [name for name in flags if name not in RESUME_SETTINGS]
    if refused:
        return f"--resume can only change {', '.join(RESUME_SETTINGS)}; not {', '.join(sorted(refused))}"
    return None


def _cmd_train(args) -> int:
    from .config import TrainConfig, read_config_file
    from .runfolder import CONFIG, new_run_dir, write_config
    from .train import Trainer, TrainingError
    flags = given_settings(args)
    try:
        if args.resume:
            run_dir = Path(args.resume)
            cfg_path = run_dir / CONFIG
            if not cfg_path.is_file():
                print(f"error: {run_dir} is not a run folder (no {CONFIG})", file=sys.stderr)
                return 2
            base = read_config_file(cfg_path)
            refused = resume_refusal(flags)
            if refused:
                print(f"error: {refused}", file=sys.stderr)
                return 2
            cfg = TrainConfig.from_dict({**base, **flags})
            if flags:
                write_config(run_dir, cfg.to_dict())
            trainer = Trainer(cfg, run_dir, resume=True, progress=not args.no_progress)
        else:
            settings = {}
            if args.config:
                settings = read_config_file(args.config)
            elif args.run_dir and (Path(args.run_dir) / CONFIG).is_file():
                settings = read_config_file(Path(args.run_dir) / CONFIG)
            cfg = TrainConfig.from_dict({**settings, **flags})
            run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg.name)
            print(f"run folder: {run_dir}", flush=True)
            trainer = Trainer(cfg, run_dir, progress=not args.no_progress)
        state = trainer.run()
    except (ValueError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if state in ("finished", "stopped") else 1


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="print the results table of a checkpoint",
                       description="Evaluate a checkpoint on a split of each of its tasks' files (the task "
                                   "definitions it stores say which files, in which format), or on one file.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, Hub repo id, or minilm-l6 (untrained heads)")
    _add_labelled_data(p, "evaluate ", "the checkpoint's")
    p.add_argument("--batch-size", type=int, default=256)
    _add_precision(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_task_choice(p, verb: str, whose: str) -> None:
    """--task (repeatable) and --tasks, read by _chosen_tasks."""
    p.add_argument("--task", action="append", metavar="NAME",
                   help=f"{verb}this task only (repeat for several; default: all of {whose} tasks)")
    p.add_argument("--tasks", help="comma-separated task names (the same as repeating --task)")


def _add_labelled_data(p, verb: str, whose: str) -> None:
    """The flags that pick a labelled set (read by _labelled_data)."""
    p.add_argument("--split", default="dev", choices=("train", "dev"), help="default: dev")
    p.add_argument("--data-dir", help="folder of the tasks' files (default: the shipped sample); a task whose "
                                      "definition names its own data_dir reads from there")
    p.add_argument("--quora-train", help="Quora train file to use when --split train")
    _add_task_choice(p, verb, whose)
    p.add_argument("--input", help="with one --task: a labelled file in that task's format instead of its split file")
    p.add_argument("--limit", type=int, help=f"{verb}only the first N examples per task")


def _add_precision(p) -> None:
    p.add_argument("--precision", default="fp32", metavar="fp32|int8|bf16",
                   help="the encoder's arithmetic: fp32 (default, exact), int8 (dynamic quantization of its "
                        "Linear layers) or bf16 (fast on CPUs with AMX or AVX-512 BF16); docs/benchmarks.md gives "
                        "each one's speed and accuracy")


def _check_precision(precision: str) -> str:
    from .quantize import check_precision
    return check_precision(precision, "--precision")


def _inference_model(model, precision: str, tokenizer):
    from .quantize import for_inference
    return for_inference(model, precision, copy_model=False, tokenizer=tokenizer)


def _load_any(name: str):
    """(model, tokenizer, meta); the plain base model has no meta."""
    from .checkpoint import MINILM, load_base, load_checkpoint
    from .model import ModelConfig, MultitaskBert
    if name == MINILM:
        encoder, tok = load_base(name)
        return MultitaskBert(encoder, ModelConfig()).eval(), tok, {}
    return load_checkpoint(name)


def _print_metrics(rows: dict, specs=None) -> None:
    """The results table, a row per split ({"Dev": metrics, ...}), then each further metric of the last row."""
    from .report import other_lines, seed_table
    print(seed_table(rows, specs))
    lines = other_lines(list(rows.values())[-1], specs)
    if lines:
        print("\n" + "\n".join(lines))


def _chosen_tasks(model, args) -> list:
    """The checkpoint's task definitions that --task/--tasks name (all of them when neither is given)."""
    names = list(args.task or []) + [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if not names:
        return list(model.cfg.tasks)
    bad = [n for n in names if n not in model.cfg.names]
    if bad:
        raise ValueError(f"--task {bad[0]} is not allowed; this checkpoint's tasks: {', '.join(model.cfg.names)}")
    return [model.cfg.task(n) for n in dict.fromkeys(names)]


def _cmd_evaluate(args) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .evaluate import evaluate
    try:
        _check_precision(args.precision)
        model, tok, _ = _load_any(args.checkpoint)
        model = _inference_model(model, args.precision, tok)
        specs = _chosen_tasks(model, args)
        data = _labelled_data(model, specs, args)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print_metrics({args.split.capitalize(): evaluate(model, tok, data, args.batch_size)}, specs)
    return 0


def _labelled_data(model, specs, args) -> dict:
    """task -> labelled examples: --input (one task's file) or the split's files, cut to --limit."""
    from .data import SAMPLE_DIR, load_split, read_task_file
    if args.input:
        if len(specs) != 1 or not (args.task or args.tasks):
            raise ValueError("--input needs exactly one --task (the task whose format the file is in)")
        examples, report = read_task_file(specs[0], args.input, labelled=True)
        loaded = {specs[0].name: (examples, report)}
    else:
        overrides = {"para": args.quora_train} if args.quora_train and "para" in model.cfg.names else None
        loaded = load_split(args.data_dir or SAMPLE_DIR, args.split, specs, overrides=overrides)
    data = {}
    for t, (examples, report) in loaded.items():
        print(f"[data] {report.summary()}", file=sys.stderr)
        data[t] = examples[:args.limit] if args.limit else examples
    return data


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a checkpoint's decision threshold of a binary task on labelled pairs",
                       description="Fit the decision threshold of a binary task (Quora's by default) of a "
                                   "checkpoint trained without calibrate_para: on --fit randomly picked "
                                   "labelled rows of --input, scored on the rest, then stored in the "
                                   "checkpoint's mtbert.json (weights untouched). Use dev rows, never test rows.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (it is updated in place)")
    p.add_argument("--task", default="para", help="a binary task of the checkpoint (default: para)")
    p.add_argument("--input", required=True, help="labelled file of the task, e.g. quora-dev.csv")
    p.add_argument("--fit", type=int, default=2000, help="pairs to fit on (default: 2000); the rest are held out")
    p.add_argument("--seed", type=int, default=0, help="which pairs are picked (default: 0)")
    p.add_argument("--dry-run", action="store_true", help="report, but do not write the checkpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args) -> int:
    from .checkpoint import CheckpointError, load_checkpoint, set_logit_offset
    from .data import DataError, read_task_file
    from .evaluate import calibrate_para
    try:
        if not Path(args.checkpoint).is_dir():
            raise CheckpointError(f"{args.checkpoint}: not a checkpoint folder (calibrate writes into one)")
        model, tok, _ = load_checkpoint(args.checkpoint)
        examples, report = read_task_file(model.cfg.task(args.task), args.input, labelled=True)
        print(f"[data] {report.summary()}", file=sys.stderr)
        r = calibrate_para(model, tok, examples, args.fit, args.seed, args.batch_size, task=args.task)
        if not args.dry_run:
            set_logit_offset(args.checkpoint, args.task, r["offset"])
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    threshold = 1 / (1 + math.exp(r["offset"]))
    print(f"fitted on {r['fit_pairs']} pairs: positive when P >= {threshold:.3f} (logit offset {r['offset']:+.3f}; "
          f"was {r['previous_offset']:+.3f})")
    print(f"accuracy on the {r['heldout_pairs']} held-out pairs: {r['acc_heldout']:.3f} fitted, "
          f"{r['acc_heldout_previous']:.3f} before, {r['acc_heldout_at_0.5']:.3f} at 0.5")
    print("dry run: checkpoint not changed" if args.dry_run else f"stored in {Path(args.checkpoint) / 'mtbert.json'}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="write id,prediction CSV for a file of one task",
                       description="Predict one task for every usable row of a file in that task's own format "
                                   "(labelled or not). Output: CSV with header id,prediction — the class index "
                                   "(sst 0-4, para 0/1) or the score (sts 0-5) — in input order.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", required=True, help="one of the checkpoint's tasks (sst, para, sts, or its own)")
    p.add_argument("--input", required=True, help="a file in the task's format (a CS224N TSV for the built-in tasks)")
    p.add_argument("--output", required=True, help="CSV to write")
    p.add_argument("--batch-size", type=int, default=256)
    _add_precision(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError, read_task_file
    from .evaluate import predict_examples, write_predictions
    try:
        _check_precision(args.precision)
        model, tok, _ = _load_any(args.checkpoint)
        model = _inference_model(model, args.precision, tok)
        if args.task not in model.cfg.names:
            raise ValueError(f"--task {args.task} is not allowed; this checkpoint's tasks: {', '.join(model.cfg.names)}")
        spec = model.cfg.task(args.task)
        examples, report = read_task_file(spec, args.input)
        print(f"[data] {report.summary()}", file=sys.stderr)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    preds = predict_examples(model, tok, spec.name, examples, args.batch_size)
    write_predictions(args.output, [e.id for e in examples], preds)
    print(f"wrote {len(preds)} predictions to {args.output}", file=sys.stderr)
    return 0


def _add_submit(sub) -> None:
    from .data import FETCH_COMMAND
    from .submit import OUTPUT_NAMES, ZIP_FOLDER, ZIP_NAME
    p = sub.add_parser("submit", help="write the CS224N leaderboard files (predictions/*-output.csv)",
                       description="Write the prediction files the CS224N default project hands in ("
                                   + ", ".join(OUTPUT_NAMES) + ") in the starter code's format, for every "
                                   "task the checkpoint was trained on and every dev / test-student file "
                                   "present; a missing one is skipped with a message. Prints the dev table.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, Hub repo id, or minilm-l6 (untrained heads)")
    p.add_argument("--data-dir", default="data/cs224n",
                   help="folder of the official CS224N files (default: data/cs224n, where `"
                        + FETCH_COMMAND.format(dest="data/cs224n") + "` puts them)")
    p.add_argument("--out", default=ZIP_FOLDER, help=f"folder to write (default: {ZIP_FOLDER})")
    p.add_argument("--zip", nargs="?", const="", metavar="FILE",
                   help=f"also pack the files as the starter's prepare_submit.py does ({ZIP_FOLDER}/<file> "
                        f"inside), into FILE (default: {ZIP_NAME} beside the --out folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_cmd_submit)


def _cmd_submit(args) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .submit import SubmitError, checkpoint_tasks, default_zip_path, write_submission
    zip_path = None if args.zip is None else args.zip or default_zip_path(args.out)
    try:
        model, tok, meta = _load_any(args.checkpoint)
        sub = write_submission(model, tok, args.data_dir, args.out, checkpoint_tasks(meta), args.batch_size,
                               zip_path=zip_path, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (CheckpointError, DataError, SubmitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(sub.written)} files to {sub.out_dir}: {', '.join(p.name for p in sub.written)}",
          file=sys.stderr)
    if sub.zip_path:
        print(f"submission zip: {sub.zip_path}", file=sys.stderr)
    _print_metrics({"Dev": sub.dev}, [model.cfg.task(t) for t in checkpoint_tasks(meta) if t in model.cfg.names])
    return 0


def _add_probe(sub) -> None:
    p = sub.add_parser("probe", help="measure how a checkpoint's answers move when gendered words are swapped",
                       description="The gender bias probe: every task of the checkpoint on template sentences "
                                   "(and pairs) whose gendered words and first names are swapped; prints per "
                                   "task the distribution of the shifts and the largest ones. With --text, "
                                   "probes that sentence (or pair, with --text-b) instead. See docs/probe.md.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, Hub repo id, or minilm-l6 (untrained heads)")
    _add_task_choice(p, "probe ", "the checkpoint's")
    p.add_argument("--text", help="probe this sentence (the first of a pair) instead of the templates")
    p.add_argument("--text-b", help="with --text: the second sentence of a pair")
    p.add_argument("--templates", help="a JSONL templates file (default: the shipped set)")
    p.add_argument("--json", metavar="OUT", help="write everything (summaries, every item's shifts) to this JSON file")
    p.add_argument("--top", type=int, default=10, help="how many of the largest shifts to print per task (default: 10)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    import json
    from .checkpoint import CheckpointError
    from .io import finite
    from .probe import ProbeError, format_summary, format_text_probe, format_top, probe_text, run_probe
    try:
        if args.text_b and not args.text:
            raise ProbeError("--text-b needs --text (the first sentence of the pair)")
        if args.top < 0:
            raise ProbeError(f"--top {args.top} is not allowed; allowed values: 0 or more")
        model, tok, _ = _load_any(args.checkpoint)
        specs = _chosen_tasks(model, args)
        if args.text:
            out = probe_text(model, tok, args.text, args.text_b, specs)
            print(format_text_probe(out))
        else:
            result = run_probe(model, tok, tasks=specs, batch_size=args.batch_size, templates=args.templates)
            print(format_summary(result))
            print(format_top(result, args.top))
            out = {"checkpoint": args.checkpoint, **result.to_dict(args.top)}
    except (CheckpointError, ProbeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(finite(out), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write an HTML error analysis of a checkpoint (or compare two)",
                       description="Write one self-contained HTML file (readable offline) of where and why a "
                                   "checkpoint fails on a labelled set: each task's metrics, confusion matrix, "
                                   "threshold, ROC, PR and reliability curves or regression scatter, and its "
                                   "most confident mistakes. A second --checkpoint adds the comparison of the "
                                   "two on the same examples (metric deltas, McNemar test or paired bootstrap, "
                                   "the examples one gets right and the other wrong).")
    p.add_argument("--checkpoint", action="append", required=True, metavar="DIR",
                   help="checkpoint folder, Hub repo id, or minilm-l6; give it twice to compare (A, then B)")
    p.add_argument("--out", required=True, help="HTML file to write, e.g. report.html")
    _add_labelled_data(p, "", "the first checkpoint's")
    p.add_argument("--mistakes", type=int, default=20, help="mistakes listed per task and direction (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (default: 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from .analysis import check_comparable, evaluate_checkpoint
    from .checkpoint import CheckpointError
    from .data import DataError
    from .htmlreport import Checkpoint, write_report
    out = Path(args.out)
    usage = (f"--checkpoint was given {len(args.checkpoint)} times; give one checkpoint, or two to compare"
             if len(args.checkpoint) > 2 else
             f"--out {out} is a folder; give a file name such as {out / 'report.html'}" if out.is_dir() else
             f"--mistakes {args.mistakes} is not allowed; give a number >= 0" if args.mistakes < 0 else
             f"--limit {args.limit} is not allowed; give a number >= 1" if args.limit is not None and args.limit < 1
             else None)
    if usage:
        print(f"error: {usage}", file=sys.stderr)
        return 2
    try:
        loaded = [_load_any(name) for name in args.checkpoint]
        specs = _chosen_tasks(loaded[0][0], args)
        for name, (model, _, _) in zip(args.checkpoint[1:], loaded[1:]):
            for s in specs:
                if s.name not in model.cfg.names:
                    raise ValueError(f"checkpoint {name} has no task {s.name}; its tasks: "
                                     f"{', '.join(model.cfg.names)} (compare tasks both checkpoints have)")
                check_comparable(s, model.cfg.task(s.name))
        data = _labelled_data(loaded[0][0], specs, args)
        what = (f"file {args.input} (task {specs[0].name})" if args.input else
                f"{args.split} split of {args.data_dir or 'the shipped sample'}")
        checkpoints = []
        for name, (model, tok, meta) in zip(args.checkpoint, loaded):
            print(f"[report] predicting with {name}", file=sys.stderr, flush=True)
            results = evaluate_checkpoint(model, tok, data, batch_size=args.batch_size)
            checkpoints.append(Checkpoint(name, results, meta))
        path = write_report(out, checkpoints, what, mistakes=args.mistakes, seed=args.seed)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({', '.join(f'{t}: {len(v):,} examples' for t, v in data.items())})", file=sys.stderr)
    return 0


def _add_rescore(sub) -> None:
    p = sub.add_parser("rescore", help="measure a trained checkpoint's metrics.json again, as its run did",
                       description="Measure the Train and Dev rows of a checkpoint a training run wrote the way "
                                   "the run's final report measured them (the run's train_eval subset; the whole "
                                   "dev split, Quora at the stored threshold with its held-out and 0.5-threshold "
                                   "accuracies), in float32 on the CPU, and write them into its metrics.json. "
                                   "For a copy whose weights changed, e.g. export --adapters-dtype float16.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (written by mtbert train)")
    p.add_argument("--data-dir", help="folder of the tasks' files (default: the one the run used)")
    p.add_argument("--quora-train", help="Quora train file (default: the one the run used)")
    p.set_defaults(func=_cmd_rescore)


def _cmd_rescore(args) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingError, rescore
    if not Path(args.checkpoint).is_dir():
        print(f"error: {args.checkpoint}: not a checkpoint folder (rescore writes its metrics.json)", file=sys.stderr)
        return 1
    try:
        results = rescore(args.checkpoint, args.data_dir, args.quora_train,
                          log=lambda line: print(line, file=sys.stderr))
    except (CheckpointError, DataError, TrainingError, ValueError) as e:
        hint = " (pass --data-dir / --quora-train where the run's files are not here)" if isinstance(e, DataError) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    _print_metrics({"Train": results["train"], "Dev": results["dev"]})
    print(f"wrote {Path(args.checkpoint) / 'metrics.json'}")
    return 0


def _add_export(sub) -> None:
    from .checkpoint import ADAPTER_DTYPES
    p = sub.add_parser("export", help="copy a checkpoint, or with --merge write it as a plain Hugging Face BERT folder",
                       description="Without --merge: copy the checkpoint folder to --out, leaving out the trainer's "
                                   "resume state. With --merge: fold LoRA adapters into the encoder's weights "
                                   "(W + alpha/r B A) and write a self-contained Hugging Face BERT folder "
                                   "(config.json, model.safetensors, tokenizer files) with the task heads and "
                                   "definitions; transformers' BertModel.from_pretrained and load_checkpoint "
                                   "both read it. A heads-only checkpoint gets its base's weights written in.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or Hub repo id")
    p.add_argument("--out", required=True, help="the folder to write (must not exist yet)")
    p.add_argument("--merge", action="store_true", help="merge the adapters and write the encoder's weights")
    p.add_argument("--adapters-dtype", choices=sorted(ADAPTER_DTYPES), default=None,
                   help="without --merge: store the LoRA adapters in this precision (float16 halves the file; "
                        "they are read back into float32)")
    p.add_argument("--heads-dtype", choices=sorted(ADAPTER_DTYPES), default=None,
                   help="without --merge: store the task heads in this precision (float16 halves the file; they are "
                        "read back into float32)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from .checkpoint import CheckpointError, export_checkpoint
    try:
        out = export_checkpoint(args.checkpoint, args.out, merge=args.merge, adapters_dtype=args.adapters_dtype,
                                heads_dtype=args.heads_dtype)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}" + (" (merged: a plain Hugging Face BERT folder plus the heads)" if args.merge else ""))
    changed = [f"{what} in {dtype}" for what, dtype in (("adapters", args.adapters_dtype), ("heads", args.heads_dtype))
               if dtype]
    if changed and (out / "metrics.json").is_file():
        print("its metrics.json was measured on the float32 weights; `python -m mtbert rescore --checkpoint "
              f"{out}` measures the copy with its {' and '.join(changed)}")
    return 0
def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of settings x seeds as a queue of trainings, with its results table",
                       description="Plan the product of the --vary lists times --seeds seeds as runs in a sweep "
                                   "folder (sweeps/<time>-<name>/), check every run's config, then train them one "
                                   "at a time (or --parallel N), or write a Slurm job array instead. docs/sweeps.md")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="the base config (YAML or JSON) every run starts from")
    what.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep's unfinished runs")
    what.add_argument("--table", metavar="SWEEP_DIR", help="print a sweep's results table")
    what.add_argument("--collect", metavar="SWEEP_DIR",
                      help="read the run folders (e.g. after a Slurm array), update the states, write the results")
    p.add_argument("--vary", action="append", default=[], metavar="SETTING=V1,V2,...",
                   help="a setting and its values (repeatable; the runs are the product of the lists); a list "
                        "setting's items are joined with + (tasks=sst+para+sts,sst)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per variant: the base seed, +1, ... (default: 1)")
    p.add_argument("--name", help="the sweep's name (default: the base config's name)")
    p.add_argument("--sweep-dir", help="the sweep folder to create (default: sweeps/<time>-<name>, "
                                       "under $MTBERT_SWEEPS_DIR if set)")
    p.add_argument("--parallel", type=int, default=1,
                   help="runs at once (default 1; more for a GPU with memory for them: docs/sweeps.md)")
    p.add_argument("--wait", action="store_true", help="wait for another training to end instead of refusing")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: run failed runs again too")
    p.add_argument("--emit-slurm", metavar="OUT_DIR",
                   help="do not train: write the sweep folder at OUT_DIR with a Slurm job array script")
    p.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                   help="an extra #SBATCH line for --emit-slurm (repeatable), e.g. --slurm-option=--gres=gpu:1")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args) -> int:
    from . import sweep
    from .config import read_config_file
    try:
        sweep.check_parallel(args.parallel)  # before a sweep folder is written
        if args.config:
            base = read_config_file(args.config)
            out_dir = args.emit_slurm or args.sweep_dir
            d = sweep.create(base, sweep.parse_vary(args.vary), args.seeds, out_dir, args.name,
                             executor="slurm" if args.emit_slurm else "local")
            n = len(sweep.load(d)["runs"])
            if args.emit_slurm:
                script = sweep.emit_slurm(d, args.slurm_option)
                print(f"wrote {script} ({n} runs: #SBATCH --array=0-{n - 1}); submit it from {d}, then "
                      f"python -m mtbert sweep --collect {d}")
                return 0
            print(f"sweep folder: {d} ({n} runs)", flush=True)
        elif args.vary or args.emit_slurm:
            print("error: --vary and --emit-slurm go with --config", file=sys.stderr)
            return 2
        d = args.resume or args.table or args.collect or d
        if args.collect:
            sweep.refresh_states(d)
            res = sweep.write_results(d)
        elif args.table:
            res = sweep.results(d)
        else:
            return sweep.Runner(d, args.parallel, args.wait, args.retry_failed,
                                out=lambda line: print(line, flush=True)).run()
        print(sweep.results_markdown(res), end="")
        return 0
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtbert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_predict(sub)
    _add_submit(sub)
    _add_probe(sub)
    _add_report(sub)
    _add_export(sub)
    _add_rescore(sub)
    _add_sweep(sub)
    data = sub.add_parser("data", help="data commands (fetch, check)", description="Data commands.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    from . import fetch, hub
    fetch.add_cli(data_sub)
    hub.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
