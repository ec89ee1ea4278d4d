"""Weight-averaging exploration on rt-polarity: one run per (fold, seed), several averages at once.

One fixed-length training run (no early stopping) per fold tracks, beside the raw weights, an
exponential moving average of the weights for each ``--decays`` (bias-corrected: the same
average as ``TrainConfig.ema_decay``) and SWA (the mean of the epoch-end weights from epoch
``--swa-start`` on). After every epoch each variant is evaluated on the validation part (and on
the test part: recorded in ``--out``, never printed or used to choose). The summary applies
early stopping (patience 1, then 2) to each variant's recorded validation-loss curve.

    python benchmarks/explore_classify_averaging.py --only 0 1 2 --epochs 6 --decays 0.99 0.995 0.998
    python benchmarks/explore_classify_averaging.py --summary --out runs/explore-avg.jsonl
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from rnnkit.config import from_dict, parse_overrides
from rnnkit.tasks.classify import ClassifyConfig, ClassifyTask, load_texts
from rnnkit.train.trainer import Trainer, TrainConfig


class Averages:
    """Trainer callback (log_every=1): EMAs and SWA of the weights, evaluated at each epoch end."""

    def __init__(self, task, decays, swa_start):
        self.task, self.decays, self.swa_start = task, decays, swa_start
        self.model = task.model
        self.names = [n for n, _, _ in self.model.named_parameters()]
        p = self.model.state_dict()
        self.ema = {d: {n: np.zeros_like(p[n]) for n in self.names} for d in decays}
        self.swa, self.swa_n, self.t, self.rows = None, 0, 0, []

    def on_step(self, trainer, row):
        self.t += 1
        p = self.model.state_dict()
        for d, shadow in self.ema.items():  # sum_i (1-d) d**(t-i) p_i; divided by 1 - d**t when used
            for n in self.names:
                a = shadow[n]
                a *= d
                a += (1 - d) * p[n]

    def _eval(self, weights):
        raw = {n: v.copy() for n, v in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        out = {s: self.task.evaluate(s) for s in ("valid", "test")}
        self.model.load_state_dict(raw)
        return out

    def on_epoch_end(self, trainer, row):
        ep = row["epoch"]
        res = {"raw": {s: self.task.evaluate(s) for s in ("valid", "test")}}
        for d, sh in self.ema.items():
            c = 1 - d ** self.t  # bias correction: a normalised average of the steps so far
            res[f"ema{d}"] = self._eval({n: v / c for n, v in sh.items()})
        if ep + 1 >= self.swa_start:
            p = self.model.state_dict()
            if self.swa is None:
                self.swa = {n: p[n].astype(np.float64) for n in self.names}
            else:
                for n in self.names:
                    self.swa[n] += p[n]
            self.swa_n += 1
            res["swa"] = self._eval({n: (v / self.swa_n).astype(np.float32) for n, v in self.swa.items()})
        self.rows.append({"epoch": ep + 1, **res})
        print(f"  epoch {ep + 1} val loss/accuracy " +
              " ".join(f"{k}:{v['valid']['loss']:.4f}/{v['valid']['accuracy']:.4f}" for k, v in res.items()), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="none")
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--optimizer", default="adam", help="adam | adamw | sgd (TrainConfig.optimizer)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="TrainConfig.weight_decay: L2 for adam, decoupled for adamw")
    p.add_argument("--decays", type=float, nargs="*", default=[0.99, 0.995, 0.998])
    p.add_argument("--swa-start", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="ClassifyConfig overrides")
    p.add_argument("--tag", default="base", help="name of this variant in --out and the summary")
    p.add_argument("--out", default="runs/explore-avg.jsonl")
    p.add_argument("--summary", action="store_true", help="only print the summary of --out")
    a = p.parse_args()
    if a.summary:
        summary(a.out)
        return
    config = from_dict(ClassifyConfig, {"dataset": "rt-polarity", "folds": 10, **parse_overrides(a.set)})
    texts, labels = load_texts(config)
    for seed in a.seeds:
        for fold in a.only:
            cfg = dataclasses.replace(config, fold=fold)
            task = ClassifyTask(cfg, texts, labels, seed=seed)
            cb = Averages(task, a.decays, a.swa_start)
            tc = TrainConfig(epochs=a.epochs, lr=a.lr, clip=5.0, early_stopping=0, seed=seed, schedule=a.schedule,
                             optimizer=a.optimizer, weight_decay=a.weight_decay,
                             min_lr=a.min_lr, run_dir=f"runs/explore-avg-{a.tag}", overwrite=True, progress=False,
                             plot=False, eval_test=False, log_every=1, keep_checkpoints=1)
            t0 = time.time()
            print(f"{a.tag} fold {fold} seed {seed}", flush=True)
            Trainer(task, tc, cfg, callbacks=[cb]).fit()
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            with open(a.out, "a") as f:
                f.write(json.dumps({"tag": a.tag, "set": a.set, "lr": a.lr, "schedule": a.schedule,
                                    "optimizer": a.optimizer, "weight_decay": a.weight_decay, "fold": fold,
                                    "seed": seed, "seconds": time.time() - t0, "rows": cb.rows}) + "\n")
    summary(a.out)


def early_stop(curve, patience):
    """(index of the lowest value seen, epochs run) under early stopping with this patience.

    None entries (SWA before --swa-start) are epochs without an evaluation: they neither count
    nor move the patience."""
    best, bad, chosen = np.inf, 0, None
    for i, v in enumerate(curve):
        if v is None:
            continue
        if v < best:
            best, bad, chosen = v, 0, i
        else:
            bad += 1
            if bad >= patience:
                break
    return chosen, i + 1


def summary(path):
    """Per tag and variant: mean validation loss/accuracy per epoch, and at the early-stopping epoch."""
    rows = [json.loads(line) for line in open(path)]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        rs = [r for r in rows if r["tag"] == tag]
        print(f"== {tag}: folds {[r['fold'] for r in rs]} seeds {sorted({r['seed'] for r in rs})} set {rs[0]['set']} "
              f"lr {rs[0]['lr']} schedule {rs[0]['schedule']} "
              f"optimizer {rs[0].get('optimizer', 'adam')} weight decay {rs[0].get('weight_decay', 0.0)}")
        for v in sorted(rs[0]["rows"][-1].keys() - {"epoch"}):
            epochs = min(len(r["rows"]) for r in rs)
            per = []
            for e in range(epochs):
                xs = [r["rows"][e].get(v) for r in rs]
                per.append("-" if None in xs else f"{np.mean([x['valid']['loss'] for x in xs]):.3f}/"
                           f"{100 * np.mean([x['valid']['accuracy'] for x in xs]):.1f}")
            print(f"  {v:9s} val loss/acc per epoch: " + " ".join(per))
            for patience in (1, 2):
                loss, acc, ran = [], [], []
                for r in rs:
                    curve = [x[v]["valid"]["loss"] if v in x else None for x in r["rows"]]
                    chosen, n = early_stop(curve, patience)
                    loss.append(r["rows"][chosen][v]["valid"]["loss"])
                    acc.append(r["rows"][chosen][v]["valid"]["accuracy"])
                    ran.append(n)
                print(f"    early stopping, patience {patience}: val loss {np.mean(loss):.4f}, "
                      f"val accuracy {100 * np.mean(acc):.2f} %, epochs run {ran}")


if __name__ == "__main__":
    main()
