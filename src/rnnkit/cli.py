"""The ``rnnkit`` command line.

    rnnkit demo                                   train a character LSTM on tiny Shakespeare, then generate
    rnnkit train --task lm --preset ptb-small     train any task; every config field is a flag
    rnnkit generate --checkpoint C --prime TEXT   stream text from a language model
    rnnkit evaluate --checkpoint C [--file F]     metrics of a checkpoint (perplexity for a language model)
    rnnkit gradflow | inspect | bench | bench-gpu the analysis and benchmark tools

Config precedence for ``train``: field defaults < ``--preset`` < ``--config FILE`` < flags.
A config file is TOML (``.toml``) or JSON (``.json``, either suffix in any case) with a ``[train]``
section (the trainer) and a ``[task]`` section (data and model; ``name = "lm"`` picks the task,
with the same precedence: ``--task`` beats ``--config``'s, which beats ``--preset``'s). Unknown
keys are errors. ``--resume`` reads the run's ``config.json`` from the run_dir that ``--run-dir``,
else ``--config``, else ``--preset`` gives (else runs/latest), beneath all of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
import typing
import warnings
from importlib import resources
from pathlib import Path

from .config import ConfigError, from_dict, merge_overrides, read_config_file

PRESETS = "presets"
TOOLS = {"gradflow": "rnnkit.analysis.gradflow", "inspect": "rnnkit.analysis.inspect", "bench": "rnnkit.bench",
         "bench-gpu": "rnnkit.bench_gpu"}


# --------------------------------------------------------------------------- flags from dataclasses
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_dataclass_flags(parser, cls, dest_prefix: str) -> None:
    """One flag per field; the value is kept as given (None when absent) and typed by from_dict."""
    group = parser.add_argument_group(f"{cls.__name__} ({dest_prefix})")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "") + f" (default: {default!r})"
        dest = f"{dest_prefix}__{f.name}"
        tp = hints.get(f.name)
        if tp is bool:
            group.add_argument(_flag(f.name), dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            kind = tp if tp in (int, float, str) else str
            group.add_argument(_flag(f.name), dest=dest, type=kind, default=None, help=help_text,
                               metavar=getattr(kind, "__name__", "VALUE").upper())


def _collect(args, prefix: str) -> dict:
    head = prefix + "__"
    return {k[len(head):]: v for k, v in vars(args).items() if k.startswith(head) and v is not None}


def _read_config_file(path: str) -> dict:
    """A --config file (or a run's config.json): a table of [train] and [task] tables (config.read_config_file)."""
    return read_config_file(path, sections=("train", "task"))


def _preset(name: str) -> dict:
    try:
        text = resources.files("rnnkit").joinpath(PRESETS, f"{name}.toml").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"preset {name!r}; expected one of {', '.join(list_presets())}") from None
    import tomllib

    return tomllib.loads(text)


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("rnnkit").joinpath(PRESETS).iterdir() if p.name.endswith(".toml"))


def _task_name(argv: list[str]) -> str:
    """The task, known before the parser is built (its flags depend on it). The precedence is
    every other setting's (:func:`resolve_train_config`): a resumed run's config.json < ``--preset``
    < ``--config`` < ``--task``; the highest that names a task wins, else "lm". With ``--resume``,
    config.json is looked for in the run_dir the same precedence gives (``--run-dir``, else
    ``--config``'s, else ``--preset``'s, else runs/latest)."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--task", "--preset", "--config", "--run-dir"):
        pre.add_argument(flag)
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.task:
        return known.task
    sources = ([_preset(known.preset)] if known.preset else []) + ([_read_config_file(known.config)] if known.config else [])
    if known.resume:
        run_dir = known.run_dir
        for source in reversed(sources):
            given = source.get("train", {}).get("run_dir")
            run_dir = run_dir or (given if isinstance(given, str) else None)  # a wrong type: from_dict says so
        saved = Path(run_dir or _default_run_dir()) / "config.json"
        sources = ([_read_config_file(str(saved))] if saved.exists() else []) + sources
    for source in reversed(sources):  # the highest precedence first
        name = source.get("task", {}).get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"task name {name!r}; expected a string such as 'lm'")
        if name:
            return name
    return "lm"


def _default_run_dir() -> str:
    from .train.trainer import TrainConfig

    return TrainConfig.run_dir


# --------------------------------------------------------------------------- commands
def build_train_parser(task_cls, prog="rnnkit train") -> argparse.ArgumentParser:
    from .train.trainer import TrainConfig

    parser = argparse.ArgumentParser(prog=prog, description="Train a model. Every config field is a flag; "
                                     "precedence: defaults < --preset < --config < flags.")
    parser.add_argument("--task", default=task_cls.name, help="lm | seq2seq | classify | caption | forecast")
    parser.add_argument("--preset", help=f"a bundled config: {', '.join(list_presets())}")
    parser.add_argument("--config", help="a TOML/JSON file with [train] and [task] sections")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    _add_dataclass_flags(parser, TrainConfig, "train")
    _add_dataclass_flags(parser, task_cls.config_class, "task")
    return parser


def resolve_train_config(task_cls, args):
    """(TrainConfig, task config): defaults < a resumed run's config.json < --preset < --config < flags."""
    from .train.trainer import TrainConfig

    sources = ([_preset(args.preset)] if args.preset else []) + ([_read_config_file(args.config)] if args.config else [])
    flags = {"train": _collect(args, "train"), "task": _collect(args, "task")}

    def merged(base: list[dict]) -> tuple[dict, dict]:
        train, task = {}, {}
        for source in base + sources + [flags]:
            train = merge_overrides(train, source.get("train", {}))
            task = merge_overrides(task, {k: v for k, v in source.get("task", {}).items() if k != "name"})
        return train, task

    train, task = merged([])
    if getattr(args, "resume", False):
        saved = Path(train.get("run_dir", TrainConfig.run_dir)) / "config.json"
        if saved.exists():  # resume needs no flags beyond --run-dir
            train, task = merged([_read_config_file(str(saved))])
    return from_dict(TrainConfig, train, where="train"), from_dict(task_cls.config_class, task, where="task")


def cmd_train(argv: list[str]) -> int:
    from .tasks import get_task
    from .train.trainer import Trainer

    task_cls = get_task(_task_name(argv))
    args = build_train_parser(task_cls).parse_args(argv)
    train_config, task_config = resolve_train_config(task_cls, args)
    print(f"task {task_cls.name}: building data and model ...", flush=True)
    task = task_cls.from_config(task_config, seed=train_config.seed)
    print(f"model: {type(task.model).__name__}, {task.model.num_parameters():,} parameters; run dir {train_config.run_dir}")
    print(_kernels_line(train_config), flush=True)
    Trainer(task, train_config, task_config).fit(resume=args.resume)
    print(f"checkpoints in {Path(train_config.run_dir) / 'checkpoints'}")
    return 0


def _load_lm(path):
    from .models.language_model import LanguageModel

    return LanguageModel.load(path)


def cmd_generate(argv: list[str]) -> int:
    from .generate import generate

    parser = argparse.ArgumentParser(prog="rnnkit generate", description="Stream text from a language model checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors file written by rnnkit train")
    parser.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    parser.add_argument("--tokens", type=int, default=500, help="how many tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (<1 sharper, >1 flatter)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set reaching this probability")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same seed, same text)")
    args = parser.parse_args(argv)
    model = _load_lm(args.checkpoint)
    stream = generate(model, args.prime, args.tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, greedy=args.greedy, seed=args.seed)
    with warnings.catch_warnings(record=True) as notes:  # e.g. prime characters read as <unk>
        warnings.simplefilter("always")
        first = next(stream, "")
    for note in notes:
        print(f"note: {note.message}", file=sys.stderr)
    sys.stdout.write(args.prime + first)
    sys.stdout.flush()
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    import json

    parser = argparse.ArgumentParser(prog="rnnkit evaluate", description="Metrics of a checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="a .safetensors file written by rnnkit train")
    parser.add_argument("--file", help="language model: a text file to measure perplexity on")
    parser.add_argument("--split", default="test", help="without --file: valid | test of the run's own data")
    parser.add_argument("--bptt", type=int, default=64, help="language model: chunk length for --file")
    args = parser.parse_args(argv)
    from .checkpoint import load_checkpoint

    _, meta = load_checkpoint(args.checkpoint)
    if args.file:
        from .data.text import read_text, tokenize
        from .data.vocab import Vocab
        from .tasks.lm import evaluate_ids

        model = _load_lm(args.checkpoint)
        vocab = Vocab.from_dict(model.vocab)
        tokens = tokenize(read_text(args.file), model.config.level)
        unknown = sorted({t for t in tokens if t not in vocab})
        if unknown and vocab.unk_id is None:
            raise ValueError(f"{args.file} has tokens not in the model's vocabulary: {unknown[:10]!r}")
        if unknown:
            print(f"note: {len(unknown)} token type(s) not in the vocabulary are scored as <unk>", file=sys.stderr)
        metrics = evaluate_ids(model, vocab.encode(tokens), 1, args.bptt)
    else:
        from .tasks import get_task

        task = get_task(meta.get("task", "lm")).from_checkpoint(args.checkpoint)
        if hasattr(task, "eval_splits"):  # lm: Task.evaluate returns {} for a split the corpus lacks
            splits = task.eval_splits()
            if {"val": "valid", "validation": "valid"}.get(args.split, args.split) not in splits:
                if args.split == "test":
                    raise ValueError(f"no 'test' split in corpus {task.corpus.name!r} (a text file is split "
                                     "train/valid); use --split valid or --file")
                raise ValueError(f"split {args.split!r}; expected one of {splits} (for other text, use --file)")
        metrics = task.evaluate(args.split)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}))
    return 0


def _kernels_line(train_config) -> str:
    """Which CPU kernels the run uses, and why not the native ones where they are missing."""
    from . import kernels

    if getattr(train_config, "device", "cpu") == "cuda":
        return "kernels: CUDA (CuPy)"
    name = kernels.selected()
    if name == "native":
        return "kernels: native (C, float32)"
    why = kernels.native.why_unavailable()
    return f"kernels: {name} (NumPy){f'; native kernels unavailable: {why}' if why else ''}"


def _is_demo_run(config: dict, preset: dict) -> bool:
    """Does a run dir's config.json say ``rnnkit demo`` wrote it? The demo's train section is the
    preset's (its time budget aside) with overwrite on, its task section the preset's."""
    train, task = config.get("train"), config.get("task")
    if not isinstance(train, dict) or not isinstance(task, dict) or train.get("overwrite") is not True:
        return False
    return (all(train.get(k) == v for k, v in preset["train"].items() if k != "time_budget")
            and all(task.get(k) == v for k, v in preset["task"].items()))


def _check_demo_run_dir(run_dir: Path, preset: dict) -> None:
    """The demo starts afresh, deleting what its run dir holds: refuse any run dir but an empty or
    missing one or an earlier demo's."""
    import json

    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not (isinstance(config, dict) and _is_demo_run(config, preset)):
        raise FileExistsError(f"--run-dir {run_dir} is not empty and not an earlier demo's run dir (no config.json "
                              "of a demo run); the demo would overwrite it: choose another --run-dir")


def cmd_demo(argv: list[str]) -> int:
    """The main job: a character LSTM on the bundled tiny Shakespeare, then generated text."""
    from .generate import generate
    from .tasks.lm import LanguageModelTask
    from .train.trainer import Trainer

    parser = argparse.ArgumentParser(prog="rnnkit demo", description=cmd_demo.__doc__)
    parser.add_argument("--run-dir", default="runs/demo", help="where checkpoints, metrics and loss.png go (an "
                        "earlier demo's there are replaced; any other non-empty directory is refused)")
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (default: the preset's)")
    parser.add_argument("--tokens", type=int, default=600, help="characters to generate at the end")
    args = parser.parse_args(argv)
    if args.minutes is not None and not 0 < args.minutes < float("inf"):
        raise ValueError(f"--minutes {args.minutes!r}; expected a number > 0")
    preset = _preset("demo")
    train = merge_overrides(preset["train"], {"run_dir": args.run_dir, "overwrite": True})
    if args.minutes is not None:
        train["time_budget"] = args.minutes * 60
    from .tasks.lm import LMTaskConfig
    from .train.trainer import TrainConfig

    train_config = from_dict(TrainConfig, train, where="train")
    task_config = from_dict(LMTaskConfig, {k: v for k, v in preset["task"].items() if k != "name"}, where="task")
    _check_demo_run_dir(Path(args.run_dir), preset)
    print("rnnkit demo: a character-level LSTM learns tiny Shakespeare (bundled, 1.1 MB) on this CPU.")
    print(f"budget {train_config.time_budget / 60:.1f} min; outputs in {args.run_dir}/ (checkpoints, metrics.csv, loss.png)")
    started = time.perf_counter()
    task = LanguageModelTask.from_config(task_config, seed=train_config.seed)
    print(f"model: {task.model.num_parameters():,} parameters; vocabulary {len(task.corpus.vocab)} characters; "
          f"{len(task.corpus.train):,} training characters")
    print(_kernels_line(train_config), flush=True)
    result = Trainer(task, train_config, task_config).fit()
    print(f"trained {time.perf_counter() - started:.0f} s: best validation loss {result['best_val_loss']:.3f} nats/char")
    best = Path(args.run_dir) / "checkpoints" / "best.safetensors"
    model = _load_lm(best)
    print(f"\n--- sampled from {best} (temperature 0.8, seed 0) ---")
    prime = "ROMEO:\n"
    sys.stdout.write(prime)
    for piece in generate(model, prime, args.tokens, temperature=0.8, seed=0):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print("\n---\nmore: rnnkit generate --checkpoint " + str(best) + " --prime 'JULIET:' --tokens 500")
    return 0


def cmd_tool(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(TOOLS[name])
    except ImportError as exc:
        print(f"rnnkit {name} is not available: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"rnnkit {name}", description=(module.__doc__ or "").split("\n")[0])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "evaluate": cmd_evaluate, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command in COMMANDS:
            return COMMANDS[command](rest)
        if command in TOOLS:
            return cmd_tool(command, rest)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:  # ConfigError, CheckpointError are ValueErrors
        print(f"rnnkit {command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .train.trainer import DivergenceError

        if not isinstance(exc, DivergenceError):
            raise
        print(f"rnnkit {command}: diverged: {exc}\n  the last checkpoint is intact; try a lower --lr, a smaller "
              "--clip, or --on-divergence rollback", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\nrnnkit {command}: interrupted; the last checkpoint (if any) is intact", file=sys.stderr)
        return 130
    print(f"rnnkit: unknown command {command!r}; expected one of {', '.join([*COMMANDS, *TOOLS])}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
