"""GPU speed: rnnkit on CuPy against PyTorch (cuDNN) and the textbook layers on CuPy, in one run.

The same language-model training step as ``rnnkit bench`` (``rnnkit/bench.py``): embedding
-> recurrent stack -> affine -> softmax cross-entropy -> backward -> clip_grad_norm(0.25)
-> SGD, stateful, on a fixed random batch, float32, configurations S, M and C, for the
LSTM, GRU and RNN. Also one recurrent layer's forward + backward alone (the figures
``shared/bench/gpu_anchor_results.md`` gives for cuDNN).

- ``rnnkit``: this package's layers on CuPy arrays (``device="cuda"``): cuBLAS GEMMs and
  one CUDA kernel per step for the cell math (``kernels/cuda_cells.cu``).
- ``rnnkit_persistent``: the same with ``kernels.cuda.persistent()``: each direction's
  whole loop one cooperative kernel each way, W_hh in shared memory.
- ``torch``: ``torch.nn`` modules on CUDA, cuDNN's recurrent kernels, TF32 off.
- ``reference``: ``benchmarks/reference_dl2.py`` (one Python object per step, "Deep
  Learning from Scratch 2" style) with its array module switched to CuPy.

Frameworks take turns round by round; each step is timed from launch to a full device
synchronisation (``perf_counter``; the step's own host work included, as a user sees
it); medians are reported. Peak device memory: PyTorch's ``max_memory_allocated``, and
for CuPy arrays the memory pool's high-water mark of bytes in use (sampled after each
step: a lower bound within a step).

``--device cpu`` runs the very same code on NumPy and PyTorch's CPU build (with
``perf_counter``), which is how the script itself is tested on machines without a GPU;
the CPU figures that count are ``rnnkit bench``'s (``benchmarks/bench_train.py``).

    rnnkit bench-gpu --json gpu.json                          # everything, on the GPU
    python benchmarks/bench_gpu.py --configs S --cells lstm --rounds 5    # the same, from a checkout
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback

import numpy as np

from .bench import CLIP, CONFIGS, LR, reference_train_step  # the CPU benchmark's sizes, clip, rate, step
from .checkpoint import write_text_atomic

FRAMEWORKS = ("rnnkit", "rnnkit_persistent", "torch", "reference")
RNNKIT = ("rnnkit", "rnnkit_persistent")  # the variants whose speed is reported as multiples


# ------------------------------------------------------------------------ devices
class Device:
    """The array module and the synchronisation of one run (``cuda`` or ``cpu``)."""

    def __init__(self, name: str):
        self.name = name
        if name == "cuda":
            import cupy  # noqa: PLC0415

            self.xp = cupy
        else:
            self.xp = np
        self.torch = None
        try:
            import torch  # noqa: PLC0415

            self.torch = torch
            if name == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
        except ImportError:
            pass
        # PyTorch's CUDA side, where there is one (a CPU build of torch beside CuPy has none)
        self.torch_cuda = self.torch is not None and name == "cuda" and self.torch.cuda.is_available()

    def sync(self) -> None:
        if self.name != "cuda":
            return
        self.xp.cuda.Device().synchronize()
        if self.torch_cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.name != "cuda":
            return
        if self.torch_cuda:
            self.torch.cuda.reset_peak_memory_stats()
        # the pool still holds the earlier frameworks' models (their steps are kept for the timing
        # rounds): a framework's peak is what it adds above them
        self._pool_base = self._pool_peak = self.xp.get_default_memory_pool().used_bytes()

    def sample_peak(self) -> None:
        if self.name == "cuda":
            self._pool_peak = max(self._pool_peak, self.xp.get_default_memory_pool().used_bytes())

    def peak_mib(self, framework: str):
        if self.name != "cuda":
            return None
        if framework == "torch":
            return self.torch.cuda.max_memory_allocated() / 2**20
        return (self._pool_peak - self._pool_base) / 2**20

    def release(self) -> None:
        if self.name == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()
            if self.torch_cuda:
                self.torch.cuda.empty_cache()

    def info(self) -> dict:
        out = {"device": self.name, "python": platform.python_version(), "numpy": np.__version__,
               "machine": platform.machine()}
        if self.name == "cuda":
            cp = self.xp
            props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
            out.update(gpu=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                       cupy=cp.__version__, cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                       cuda_driver=cp.cuda.runtime.driverGetVersion())
        if self.torch is not None:
            out["torch"] = self.torch.__version__
            if self.torch_cuda:
                out["cudnn"] = self.torch.backends.cudnn.version()
                out["tf32"] = bool(self.torch.backends.cuda.matmul.allow_tf32 or self.torch.backends.cudnn.allow_tf32)
        return out


# ------------------------------------------------------------------------ builders
def _batch(V, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def build_rnnkit_step(dev: Device, cell, V, D, H, L, B, T):
    from . import backend  # noqa: PLC0415
    from .bench import _build_rnnkit  # noqa: PLC0415

    ids, targets = _batch(V, B, T)
    backend.set_device(dev.name)
    try:
        make_train, _ = _build_rnnkit(cell, V, D, H, L, seed=0)
        return make_train(dev.xp.asarray(ids), dev.xp.asarray(targets))
    finally:
        backend.set_device("cpu")


def build_torch_step(dev: Device, cell, V, D, H, L, B, T):
    torch = dev.torch
    device = "cuda" if dev.name == "cuda" else "cpu"
    torch.manual_seed(0)
    rnn_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    embed = torch.nn.Embedding(V, D).to(device)
    rnn = rnn_class(D, H, num_layers=L, batch_first=True).to(device)
    out = torch.nn.Linear(H, V).to(device)
    params = [*embed.parameters(), *rnn.parameters(), *out.parameters()]
    opt = torch.optim.SGD(params, lr=LR)
    ids, targets = _batch(V, B, T)
    x = torch.from_numpy(ids).to(device)
    t = torch.from_numpy(targets).reshape(-1).to(device)
    state = [None]

    def detach(s):
        return tuple(v.detach() for v in s) if isinstance(s, tuple) else s.detach()

    def step():
        opt.zero_grad(set_to_none=True)
        y, st = rnn(embed(x), state[0])
        state[0] = detach(st)
        loss = torch.nn.functional.cross_entropy(out(y).reshape(-1, V), t)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss
    return step


def _reference_module():
    """A fresh copy of ``benchmarks/reference_dl2.py``, found as ``rnnkit bench`` finds it (in
    ./benchmarks or the checkout rnnkit runs from)."""
    from .bench import find_reference, load_reference  # noqa: PLC0415

    path = find_reference()
    if path is None:
        raise FileNotFoundError("benchmarks/reference_dl2.py not found (run from a checkout of rnnkit)")
    return load_reference(path)


def build_reference_step(dev: Device, cell, V, D, H, L, B, T):
    ref = _reference_module()  # built on the host with NumPy's generator, as on the CPU ...
    model = ref.LanguageModel(cell, V, D, H, L, seed=0)
    if dev.name == "cuda":  # ... then every array moved and the module's np switched to CuPy
        cp = dev.xp
        for layer in model.layers:
            layer.params[:] = [cp.asarray(p) for p in layer.params]
            layer.grads[:] = [cp.asarray(g) for g in layer.grads]
        model.params = [p for layer in model.layers for p in layer.params]
        model.grads = [g for layer in model.layers for g in layer.grads]
        ref.np = cp
    ids, targets = _batch(V, B, T)
    return reference_train_step(ref, model, dev.xp.asarray(ids), dev.xp.asarray(targets))


def build_rnnkit_layer(dev: Device, cell, D, H, B, T):
    from . import backend, layers  # noqa: PLC0415

    cls = {"lstm": layers.LSTM, "gru": layers.GRU, "rnn": layers.RNN}[cell]
    backend.set_device(dev.name)
    try:
        layer = cls(D, H, seed=0)
    finally:
        backend.set_device("cpu")
    rng = np.random.default_rng(1)
    x = dev.xp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
    dy = dev.xp.asarray(rng.standard_normal((B, T, H)).astype(np.float32))

    def step():
        layer.forward(x)
        layer.backward(dy)
    return step


def build_torch_layer(dev: Device, cell, D, H, B, T):
    torch = dev.torch
    device = "cuda" if dev.name == "cuda" else "cpu"
    torch.manual_seed(0)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](D, H, batch_first=True).to(device)
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    dy = torch.randn(B, T, H, device=device)

    def step():
        y, _ = rnn(x)
        y.backward(dy)
    return step


def _persistent(builder):
    """The rnnkit builder's step, run with the persistent LSTM kernels switched on."""
    def build(dev: Device, cell, *args):
        from .kernels import cuda  # noqa: PLC0415

        inner = builder(dev, cell, *args)

        def step():
            with cuda.persistent():
                out = inner()
            failed = {k: v for k, v in cuda.failures().items() if "_persistent_" in k[0]}
            if failed:  # it ran the GEMM loop instead: not the figure this row is for
                raise RuntimeError(f"the persistent kernels failed here: {failed}")
            return out
        return step
    return build


# embedding forward, recurrent forward, output layer + loss (forward and backward, fused),
# recurrent backward, embedding backward, clip_grad_norm, SGD update
PHASES = ("emb fwd", "rnn fwd", "out+loss", "rnn bwd", "emb bwd", "clip", "sgd")


class PhaseTimer:
    """Marks between the phases of one step: CUDA events on the GPU (device time between
    them, read after the step), perf_counter on the CPU."""

    def __init__(self, dev: Device):
        self.dev = dev
        self.marks = []

    def mark(self) -> None:
        if self.dev.name == "cuda":
            event = self.dev.xp.cuda.Event()
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations_ms(self) -> list[float]:
        if self.dev.name == "cuda":
            self.marks[-1].synchronize()
            return [self.dev.xp.cuda.get_elapsed_time(a, b) for a, b in zip(self.marks, self.marks[1:])]
        return [1e3 * (b - a) for a, b in zip(self.marks, self.marks[1:])]


def profile_phases(dev: Device, config: str, cell: str, rounds: int, warmup: int) -> list[dict]:
    """rnnkit's training step phase by phase (the profile the results file reports before and
    after a change): median milliseconds of each over ``rounds`` steps."""
    from . import backend, optim  # noqa: PLC0415
    from .bench import rnnkit_lm  # noqa: PLC0415
    from .layers import linear_cross_entropy  # noqa: PLC0415

    V, D, H, L, B, T = CONFIGS[config]
    ids, targets = (dev.xp.asarray(a) for a in _batch(V, B, T))
    backend.set_device(dev.name)
    try:
        model = rnnkit_lm(cell, V, D, H, L, seed=0)
    finally:
        backend.set_device("cpu")
    opt = optim.SGD(model, lr=LR)
    per_phase = {name: [] for name in PHASES}
    totals = []
    for i in range(warmup + rounds):
        opt.zero_grad()
        dev.sync()
        timer = PhaseTimer(dev)
        t0 = time.perf_counter()
        timer.mark()
        x = model.embed.forward(ids)
        timer.mark()
        y, _ = model.rnn.forward(x)
        timer.mark()
        dy = linear_cross_entropy(model.out, y, targets).dx
        timer.mark()
        dx = model.rnn.backward(dy)
        timer.mark()
        model.embed.backward(dx)
        timer.mark()
        optim.clip_grad_norm(model, CLIP)
        timer.mark()
        opt.step()
        timer.mark()
        dev.sync()
        wall = time.perf_counter() - t0
        if i >= warmup:
            for name, ms in zip(PHASES, timer.durations_ms()):
                per_phase[name].append(ms)
            totals.append(1e3 * wall)
    phases = {name: statistics.median(v) for name, v in per_phase.items()}
    return [{"kind": "phases", "config": config, "cell": cell, "framework": "rnnkit", "phases_ms": phases,
             "ms": statistics.median(totals), "rounds": rounds}]


BUILDERS = {
    "step": {"rnnkit": build_rnnkit_step, "rnnkit_persistent": _persistent(build_rnnkit_step),
             "torch": build_torch_step, "reference": build_reference_step},
    "layer": {"rnnkit": build_rnnkit_layer, "rnnkit_persistent": _persistent(build_rnnkit_layer),
              "torch": build_torch_layer},
    "phases": {},  # profile_phases: rnnkit's step phase by phase
}


# ------------------------------------------------------------------------ timing
def time_case(dev: Device, kind: str, config: str, cell: str, frameworks, rounds: int, warmup: int) -> list[dict]:
    V, D, H, L, B, T = CONFIGS[config]
    args = (cell, V, D, H, L, B, T) if kind == "step" else (cell, D, H, B, T)
    steps, rows, peaks = {}, [], {}
    for fw in frameworks:
        if fw not in BUILDERS[kind] or (fw == "torch" and dev.torch is None):
            continue
        if fw == "rnnkit_persistent" and dev.name != "cuda":
            continue  # the same code as rnnkit there
        if fw == "torch" and dev.name == "cuda" and not dev.torch_cuda:
            rows.append({"kind": kind, "config": config, "cell": cell, "framework": fw,
                         "error": "this PyTorch build has no CUDA", "trace": ""})
            continue
        try:
            dev.sync()
            dev.release()
            dev.reset_peak()
            step = BUILDERS[kind][fw](dev, *args)
            for _ in range(warmup):
                step()
                dev.sync()
                dev.sample_peak()
            steps[fw] = step
            peaks[fw] = dev.peak_mib(fw)
        except Exception as exc:  # report it and go on: one framework's failure must not hide the others
            rows.append({"kind": kind, "config": config, "cell": cell, "framework": fw,
                         "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=4)})
            print(f"  {kind} {config}/{cell} {fw}: FAILED {type(exc).__name__}: {exc}", flush=True)
    times = {fw: [] for fw in steps}
    for _ in range(rounds):
        for fw, step in steps.items():
            dev.sync()
            t0 = time.perf_counter()
            step()
            dev.sync()
            times[fw].append(time.perf_counter() - t0)
    tokens = B * T
    for fw, ts in times.items():
        ms = 1e3 * statistics.median(ts)
        rows.append({"kind": kind, "config": config, "cell": cell, "framework": fw, "ms": ms,
                     "ms_min": 1e3 * min(ts), "ms_max": 1e3 * max(ts), "rounds": len(ts),
                     "tokens_per_s": tokens / (ms / 1e3), "peak_mib": peaks.get(fw)})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """rnnkit's speed as a multiple of each other framework's (> 1: rnnkit is faster)."""
    out = []
    by = {(r["kind"], r["config"], r["cell"], r["framework"]): r for r in rows if "ms" in r and r["kind"] != "phases"}
    for (kind, config, cell, fw), r in by.items():
        if fw not in RNNKIT:
            continue
        entry = {"kind": kind, "config": config, "cell": cell, "framework": fw, "ms": r["ms"]}
        for other in ("torch", "reference"):
            o = by.get((kind, config, cell, other))
            if o is not None:
                entry[f"x_{other}"] = o["ms"] / r["ms"]
        out.append(entry)
    return out


def format_table(rows: list[dict]) -> str:
    lines = ["kind   cfg cell  framework    ms/step  (min - max)        tokens/s   peak MiB"]
    for r in rows:
        if r["kind"] == "phases":
            continue
        head = f"{r['kind']:<6} {r['config']:<3} {r['cell']:<5} {r['framework']:<10}"
        if "error" in r:
            lines.append(f"{head} FAILED: {r['error']}")
            continue
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:9.1f}"
        lines.append(f"{head} {r['ms']:9.3f}  ({r['ms_min']:.3f} - {r['ms_max']:.3f})  {r['tokens_per_s']:12,.0f} {peak}")
    profiles = [r for r in rows if r["kind"] == "phases"]
    if profiles:
        lines += ["", "rnnkit's step phase by phase (ms, median; device time between CUDA events on the GPU):",
                  "cfg cell  " + "  ".join(f"{name:>10}" for name in PHASES) + "   step (wall)"]
        for r in profiles:
            lines.append(f"{r['config']:<3} {r['cell']:<5} " + "  ".join(f"{r['phases_ms'][n]:10.3f}" for n in PHASES)
                         + f"   {r['ms']:10.3f}")
    lines.append("")
    lines.append("rnnkit as a multiple of: (> 1 means rnnkit is faster)")
    for e in ratios(rows):
        parts = [f"x torch {e['x_torch']:.2f}" if "x_torch" in e else "",
                 f"x reference {e['x_reference']:.1f}" if "x_reference" in e else ""]
        lines.append(f"  {e['kind']:<6} {e['config']:<3} {e['cell']:<5} {e['framework']:<18} "
                     + "  ".join(p for p in parts if p))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--configs", default="S,M,C", help="comma-separated subset of S,M,C")
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated subset of lstm,gru,rnn")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--kinds", default="step,layer,phases",
                   help="step (the LM training step), layer (one layer), phases (rnnkit's step phase by phase)")
    p.add_argument("--rounds", type=int, default=30, help="timed steps per framework (the median is reported)")
    p.add_argument("--reference-rounds", type=int, default=5, help="timed steps of the (slow) reference")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", help="write every row, the ratios and the environment here")


def _lists(args) -> None:
    """The comma-separated flags as lists, checked (ValueError naming the value)."""
    for name, allowed in (("configs", CONFIGS), ("cells", ("lstm", "gru", "rnn")), ("frameworks", FRAMEWORKS),
                          ("kinds", BUILDERS)):
        raw = getattr(args, name)
        values = raw if isinstance(raw, list) else [v for v in raw.split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"--{name} {raw!r}; expected a comma-separated subset of {', '.join(allowed)}")
        setattr(args, name, values)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        _lists(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def run(args) -> int:
    """``rnnkit bench-gpu``: time every case, print the table, write --json."""
    _lists(args)
    dev = Device(args.device)
    env = dev.info()
    env["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(json.dumps(env), flush=True)
    rows = []

    def write_json(complete: bool) -> None:  # after every case too: a run cut short keeps what it measured
        if args.json:
            data = {"environment": env, "complete": complete, "rows": rows, "ratios": ratios(rows)}
            write_text_atomic(args.json, json.dumps(data, indent=1))

    for kind in args.kinds:
        for config in args.configs:
            for cell in args.cells:
                if kind == "phases":
                    if "rnnkit" in args.frameworks:
                        rows += profile_phases(dev, config, cell, min(args.rounds, 10), args.warmup)
                    continue
                fws = [f for f in args.frameworks if f != "reference"]
                case = time_case(dev, kind, config, cell, fws, args.rounds, args.warmup)
                if "reference" in args.frameworks and kind == "step":
                    case += time_case(dev, kind, config, cell, ["reference"], args.reference_rounds, 1)
                for r in case:
                    if "ms" in r:
                        print(f"  {kind} {config}/{cell} {r['framework']}: {r['ms']:.3f} ms", flush=True)
                rows += case
                write_json(False)
    print()
    print(format_table(rows))
    write_json(True)
    return 1 if any("error" in r for r in rows) else 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
