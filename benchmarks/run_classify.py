"""Classification benchmark: rt-polarity (k-fold) and SMS spam (fixed split) with SequenceClassifier.

Each run is one ``rnnkit train --task classify`` run through the shared Trainer (Adam,
clipping, early stopping on validation loss; the best checkpoint is evaluated on the
test part). One JSON line per (fold, seed) goes to ``--out``; a summary (mean +- std
over runs) to stdout.

    python benchmarks/run_classify.py --dataset rt-polarity --folds 10 --out runs/rt.jsonl
    python benchmarks/run_classify.py --dataset sms-spam --seeds 0 1 2 --out runs/sms.jsonl
    python benchmarks/run_classify.py --dataset rt-polarity --folds 10 --only 0 1 --set cell=gru pooling=mean
    python benchmarks/run_classify.py --dataset rt-polarity --folds 10 --epochs 6 --patience 1 --ema-decay 0.998
    python benchmarks/run_classify.py --dataset rt-polarity --folds 10 --epochs 6 --patience 1 --set pretrain_epochs=1

``--set name=value`` overrides any ClassifyConfig field (the same names as the CLI flags).
``--set pretrain_epochs=N`` first trains the embedding and encoder as a bidirectional language
model on each fold's own training texts (labels unused; see rnnkit.models.bilm).
With several ``--seeds`` the splits stay put (``split_seed``) and the summary also scores
the ensemble that averages the seeds' test probabilities, per fold.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from rnnkit.config import from_dict, parse_overrides, to_dict
from rnnkit.tasks.classify import ClassifyConfig, ClassifyTask, load_texts
from rnnkit.train.trainer import Trainer, TrainConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="rt-polarity")
    p.add_argument("--data-dir", default="")
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation (0: fixed split)")
    p.add_argument("--only", type=int, nargs="*", help="run only these folds")
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=2, help="early stopping: epochs without a better val loss")
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--optimizer", default="adam", help="adam | adamw | sgd (TrainConfig.optimizer)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="TrainConfig.weight_decay: L2 for adam and sgd, decoupled for adamw")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="average the weights (TrainConfig.ema_decay): validate, early-stop on and test the "
                        "exponential moving average of the weights, with this decay per step (0: off)")
    p.add_argument("--run-dir", default="runs/classify", help="checkpoints of the current run (overwritten)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="ClassifyConfig overrides")
    p.add_argument("--out", type=Path, help="append one JSON line per run here")
    args = p.parse_args(argv)

    base = {"dataset": args.dataset, "data_dir": args.data_dir, "folds": args.folds}
    config = from_dict(ClassifyConfig, {**base, **parse_overrides(args.set)})
    texts, labels = load_texts(config)
    folds = args.only if args.only is not None else (range(args.folds) if args.folds else [0])
    results, probs, truth = [], {fold: [] for fold in folds}, {}
    for seed in args.seeds:
        for fold in folds:
            cfg = dataclasses.replace(config, fold=fold)
            task = ClassifyTask(cfg, texts, labels, seed=seed)
            print(f"{args.dataset} fold {fold} seed {seed}: {len(task.splits['train'])} train, "
                  f"{len(task.splits['valid'])} val, {len(task.splits['test'])} test, vocab {len(task.vocab)}",
                  flush=True)
            start = time.time()
            train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, clip=args.clip, early_stopping=args.patience,
                                    optimizer=args.optimizer, weight_decay=args.weight_decay,
                                    ema_decay=args.ema_decay, seed=seed, run_dir=args.run_dir, overwrite=True,
                                    progress=False)
            res = Trainer(task, train_cfg, cfg).fit()
            res.update(fold=fold, seed=seed, seconds=round(time.time() - start, 1), config=to_dict(cfg),
                       train=to_dict(train_cfg))
            probs[fold].append(task.predict_split("test")[0])  # the trainer left the best weights loaded
            truth[fold] = task.targets[task.splits["test"]]
            print(f"  -> test accuracy {res['test_accuracy']:.4f}" +
                  (f", F1 {res['test_f1']:.4f}" if "test_f1" in res else ""), flush=True)
            results.append(res)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(res) + "\n")
    acc = np.array([r["test_accuracy"] for r in results])
    print(f"test accuracy over {len(acc)} run(s): mean {acc.mean():.4f} std {acc.std():.4f} "
          f"min {acc.min():.4f} max {acc.max():.4f}")
    for seed in args.seeds:
        per_seed = [r["test_accuracy"] for r in results if r["seed"] == seed]
        print(f"  seed {seed}: mean over {len(per_seed)} fold(s) {np.mean(per_seed):.4f}")
    if len(args.seeds) > 1:
        ensemble = {fold: float((np.mean(probs[fold], axis=0).argmax(axis=1) == truth[fold]).mean()) for fold in folds}
        print(f"ensemble of {len(args.seeds)} seeds (mean probabilities): mean over {len(folds)} fold(s) "
              f"{np.mean(list(ensemble.values())):.4f}  per fold " +
              " ".join(f"{ensemble[f]:.4f}" for f in folds))
        if args.out:
            with args.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"ensemble_seeds": args.seeds, "ensemble_test_accuracy": ensemble}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
