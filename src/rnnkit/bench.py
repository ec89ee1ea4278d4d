"""``rnnkit bench``: training and generation speed of rnnkit, PyTorch and the textbook layers.

One language model, three implementations, same sizes, same dtype (float32), same
thread count: embedding -> recurrent stack -> affine -> softmax cross-entropy ->
backward -> clip_grad_norm(0.25) -> SGD update, on a fixed random batch (stateful:
the state is carried across steps, the backward stops at the chunk edge). Generation
is one token at a time at batch 1, carrying the state, greedy.

- ``rnnkit``: this package's layers and optimizer.
- ``torch``: ``torch.nn.Embedding/LSTM/GRU/RNN/Linear`` + ``cross_entropy`` (skipped,
  with a note, when PyTorch is not installed).
- ``reference``: ``benchmarks/reference_dl2.py``, one Python object per step, the way
  "Deep Learning from Scratch 2" builds its layers (skipped when the file is not found).

Each framework runs in its own worker process (so its peak memory is its own) and the
parent interleaves their repetitions round by round, so machine noise hits all alike.
Before each request the parent waits until every worker has gone idle: a BLAS's worker
threads keep spinning on a core after their last call (NumPy's OpenBLAS for about 0.1 s,
measured), and a worker timed inside that window of another's loses that core.
Peak memory is the resident-set high-water mark over building the model and its first
training steps, minus the resident set just before (``/proc/self/clear_refs``);
``transient`` is tracemalloc's peak of the NumPy allocations made by one training step.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {  # name: (V, D, H, num_layers, B, T)
    "S": (10000, 100, 100, 1, 20, 35),
    "M": (10000, 650, 650, 2, 20, 35),
    "C": (65, 64, 512, 1, 32, 128),
}
STEPS_PER_ROUND = {"S": 4, "M": 2, "C": 2}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
FRAMEWORKS = ("rnnkit", "torch", "reference")
CLIP, LR = 0.25, 1.0


def flops_per_token(cell: str, V: int, D: int, H: int, num_layers: int) -> float:
    """GEMM flops of one token, forward + backward (3x the forward's multiply-adds x 2)."""
    G = GATES[cell] * H
    forward = sum(2 * G * ((D if k == 0 else H) + H) for k in range(num_layers)) + 2 * H * V
    return 3.0 * forward


def find_reference() -> Path | None:
    here = Path(__file__).resolve()
    for candidate in (Path.cwd() / "benchmarks", here.parents[2] / "benchmarks"):
        if (candidate / "reference_dl2.py").is_file():
            return candidate / "reference_dl2.py"
    return None


# ====================================================================== worker side
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _blas_info(framework: str) -> dict:
    info = {}
    try:
        import threadpoolctl  # noqa: PLC0415

        info["pools"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "prefix")}
                         for p in threadpoolctl.threadpool_info()]
    except ImportError:
        info["pools"] = "threadpoolctl not installed"
    if framework == "rnnkit":
        from . import kernels  # noqa: PLC0415

        info["rnnkit_kernels"] = kernels.selected()
        info["native"] = kernels.native.isa() if kernels.native.available() else kernels.native.why_unavailable()
    if framework == "torch":
        import torch  # noqa: PLC0415

        cfg = torch.__config__.show()
        info["torch_blas"] = next((s.split("=")[1] for s in cfg.replace(",", "\n").split("\n") if "BLAS_INFO" in s), "?")
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def rnnkit_lm(cell, V, D, H, L, seed, stateful=True):
    """The benchmark's model in rnnkit's layers: embedding -> recurrent stack -> linear, with
    ``loss_and_backward(ids, targets)`` as ``LanguageModel``'s (the output layer and its loss
    fused). Its parts are ``embed``, ``rnn`` and ``out`` (``benchmarks/bench_gpu.py`` times them
    one by one)."""
    import numpy as np  # noqa: PLC0415

    from .layers import GRU, LSTM, RNN, Embedding, Layer, Linear, linear_cross_entropy  # noqa: PLC0415

    rnn_class = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[cell]

    class LM(Layer):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(seed)
            self.embed = Embedding(V, D, rng=rng, init_std=0.01)
            self.rnn = rnn_class(D, H, num_layers=L, stateful=stateful, rng=rng)
            self.out = Linear(H, V, rng=rng)

        def loss_and_backward(self, ids, targets):
            # as LanguageModel.loss_and_backward: the output layer and its loss fused, block by block
            # C's 65 characters: through W_ih as a lookup; time-major, no transposes (no dropout here)
            y, _ = self.rnn.forward_embedded(self.embed, ids, time_major=True)
            loss, _, dy = linear_cross_entropy(self.out, y, targets.T)
            self.rnn.backward(dy)  # accumulates the embedding's gradient too
            return loss

    return LM()


def _build_rnnkit(cell, V, D, H, L, seed):
    import numpy as np  # noqa: PLC0415

    from . import optim  # noqa: PLC0415

    def LM(stateful):  # noqa: N802 - reads as the class it builds
        return rnnkit_lm(cell, V, D, H, L, seed, stateful=stateful)

    def make_train(ids, targets):
        model = LM(stateful=True)
        opt = optim.SGD(model, lr=LR)

        def step():
            opt.zero_grad()
            loss = model.loss_and_backward(ids, targets)
            optim.clip_grad_norm(model, CLIP)
            opt.step()
            return loss
        return step

    def make_generate():
        model = LM(stateful=False).eval()
        token = np.zeros((1, 1), dtype=np.int64)
        state = [None]

        def step():
            y, state[0] = model.rnn.forward(model.embed.forward(token), state[0])
            token[0, 0] = int(model.out.forward(y[:, -1]).argmax())
        return step
    return make_train, make_generate


def _build_torch(cell, V, D, H, L, seed):
    import torch  # noqa: PLC0415

    torch.manual_seed(seed)
    rnn_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(V, D)
            self.rnn = rnn_class(D, H, num_layers=L, batch_first=True)
            self.out = torch.nn.Linear(H, V)

    def detach(state):
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    def make_train(ids, targets):
        model = LM()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        x, t = torch.from_numpy(ids), torch.from_numpy(targets).reshape(-1)
        state = [None]

        def step():
            opt.zero_grad(set_to_none=True)
            y, st = model.rnn(model.embed(x), state[0])
            state[0] = detach(st)
            loss = torch.nn.functional.cross_entropy(model.out(y).reshape(-1, V), t)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            return float(loss.detach())
        return step

    def make_generate():
        model = LM().eval()
        token = torch.zeros((1, 1), dtype=torch.int64)
        state = [None]

        def step():
            with torch.inference_mode():
                y, state[0] = model.rnn(model.embed(token), state[0])
                token[0, 0] = int(model.out(y[:, -1]).argmax())
        return step
    return make_train, make_generate


def load_reference(path):
    """A fresh module object of ``benchmarks/reference_dl2.py`` at ``path`` (its own globals,
    so ``bench_gpu`` can switch its ``np`` to CuPy without touching another copy)."""
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("reference_dl2", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return ref


def reference_train_step(ref, model, ids, targets):
    """The textbook model's training step (forward, backward, clip, SGD) as a closure."""
    opt = ref.SGD(LR)

    def step():
        loss = model.forward(ids, targets)
        model.backward()
        ref.clip_grads(model.grads, CLIP)
        opt.update(model.params, model.grads)
        return loss
    return step


def _build_reference(cell, V, D, H, L, seed, path):
    ref = load_reference(path)

    def make_train(ids, targets):
        return reference_train_step(ref, ref.LanguageModel(cell, V, D, H, L, seed=seed), ids, targets)

    def make_generate():
        model = ref.LanguageModel(cell, V, D, H, L, seed=seed)
        token = [0]

        def step():
            token[0] = model.generate_step(token[0])
        return step
    return make_train, make_generate


def _reply(obj) -> None:
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(args) -> int:
    """Serve commands from the parent on stdin: ``train k``, ``gen k``, ``trace``, ``quit``."""
    import numpy as np  # noqa: PLC0415

    np.seterr(over="ignore")  # the textbook sigmoid 1/(1+exp(-x)) overflows harmlessly in float32
    if args.worker == "gemm":
        return _gemm_worker(args)
    V, D, H, L, B, T = CONFIGS[args.config]
    if args.worker == "torch":
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
        builders = _build_torch(args.cell, V, D, H, L, args.seed)
    elif args.worker == "reference":
        builders = _build_reference(args.cell, V, D, H, L, args.seed, args.reference)
    else:
        builders = _build_rnnkit(args.cell, V, D, H, L, args.seed)
    make_train, make_generate = builders
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, V, size=(B, T), dtype=np.int64)
    targets = rng.integers(0, V, size=(B, T), dtype=np.int64)

    base_kib = _rss_kib("VmRSS")
    exact_peak = _reset_peak_rss()
    train = make_train(ids, targets)
    losses = [train() for _ in range(args.warmup)]
    peak_kib = _rss_kib("VmHWM") - base_kib if exact_peak else None
    generate = make_generate()
    for _ in range(args.warmup):
        generate()
    _reply({"ready": True, "blas": _blas_info(args.worker), "first_losses": losses,
            "peak_rss_mib": None if peak_kib is None else peak_kib / 1024.0})

    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "quit":
            break
        n = int(rest[0]) if rest else 1
        if cmd in ("train", "gen"):
            fn = train if cmd == "train" else generate
            clock = time.process_time if args.timer == "cpu" else time.perf_counter
            times, loss = [], None
            for _ in range(n):
                t0 = clock()
                loss = fn()
                times.append(clock() - t0)
            _reply({"times": times, "loss": loss})
        elif cmd == "trace":
            import tracemalloc  # noqa: PLC0415

            tracemalloc.start()
            train()
            _, transient = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            _reply({"transient_mib": transient / 2**20})
    return 0


def _gemm_worker(args) -> int:
    """Single-precision GEMM rate of NumPy's BLAS (and PyTorch's, if present), square n=2048."""
    import numpy as np  # noqa: PLC0415

    n, reps = 2048, 10
    out = {"n": n, "blas": _blas_info("numpy")}
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    c = np.empty_like(a)

    clock = time.process_time if args.timer == "cpu" else time.perf_counter

    def rate(fn):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            t0 = clock()
            fn()
            ts.append(clock() - t0)
        return 2.0 * n**3 / sorted(ts)[len(ts) // 2] / 1e9

    out["numpy_gflops"] = rate(lambda: np.matmul(a, a, out=c))
    try:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
        ta = torch.from_numpy(a)
        tc = torch.empty_like(ta)
        out["torch_gflops"] = rate(lambda: torch.mm(ta, ta, out=tc))
    except ImportError:
        out["torch_gflops"] = None
    _reply(out)
    return 0


# ====================================================================== parent side
class Worker:
    def __init__(self, framework, config, cell, args, reference):
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
        if args.malloc_tuned_all:  # what rnnkit's native kernels ask of glibc, for every framework
            env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
        cmd = [sys.executable, "-m", "rnnkit.bench", "--worker", framework, "--config", config, "--cell", cell,
               "--threads", str(args.threads), "--seed", str(args.seed), "--warmup", str(args.warmup),
               "--timer", args.timer]
        if reference:
            cmd += ["--reference", str(reference)]
        self.framework = framework
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"{self.framework} worker exited (code {self.proc.wait()})")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait()


def _cpu_seconds(pid: int) -> float:
    """CPU time of all threads of a process, in seconds (Linux ``schedstat``; 0 elsewhere)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[0])  # nanoseconds on a CPU
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0.0
    return total / 1e9


def settle(pids, window: float = 0.02, timeout: float = 2.0) -> float:
    """Wait until none of ``pids`` uses CPU over a ``window``-second interval; return the wait.

    Spinning BLAS threads of an idle worker would otherwise take a core from the worker
    timed next (0.1 s of spin after NumPy's last OpenBLAS call made a 2-thread torch GEMM
    loop 1.7x slower in a test on this project's machine). Gives up after ``timeout``.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        before = sum(_cpu_seconds(p) for p in pids)
        time.sleep(window)
        if sum(_cpu_seconds(p) for p in pids) - before < 0.05 * window:  # under 5 % of one core
            break
    return time.perf_counter() - start


def _stats(times) -> dict:
    import numpy as np  # noqa: PLC0415

    ms = np.asarray(times) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1), "min_ms": float(ms.min()), "n": len(ms)}


def run_case(config, cell, frameworks, args, reference) -> list[dict]:
    V, D, H, L, B, T = CONFIGS[config]
    workers = [Worker(fw, config, cell, args, reference) for fw in frameworks]
    rows = {w.framework: {"config": config, "cell": cell, "framework": w.framework} for w in workers}
    train_times = {w.framework: [] for w in workers}
    gen_times = {w.framework: [] for w in workers}
    try:
        for w in workers:  # one at a time, so their warm-ups do not overlap
            ready = w.read()
            rows[w.framework].update(blas=ready["blas"], peak_rss_mib=ready["peak_rss_mib"],
                                     first_losses=ready["first_losses"])
        steps = args.steps or STEPS_PER_ROUND[config]
        for r in range(args.rounds):
            order = workers[r % len(workers):] + workers[: r % len(workers)]
            for w in order:
                settle([v.proc.pid for v in workers])
                reply = w.ask(f"train {steps}")
                train_times[w.framework] += reply["times"]
                rows[w.framework]["last_loss"] = reply["loss"]
                settle([v.proc.pid for v in workers])
                gen_times[w.framework] += w.ask(f"gen {args.gen_tokens}")["times"]
        for w in workers:
            if w.framework != "torch":
                rows[w.framework]["transient_mib"] = w.ask("trace")["transient_mib"]
    finally:
        for w in workers:
            w.close()
    out = []
    for fw, row in rows.items():
        train_stats, gen_stats = _stats(train_times[fw]), _stats(gen_times[fw])
        row.update(train=train_stats, generate=gen_stats,
                   tokens_per_s=B * T / (train_stats["median_ms"] / 1e3),
                   gflops=flops_per_token(cell, V, D, H, L) * B * T / (train_stats["median_ms"] / 1e3) / 1e9)
        out.append(row)
    return out


def environment(args) -> dict:
    import numpy as np  # noqa: PLC0415

    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "numpy": np.__version__, "threads": args.threads, "timer": args.timer, "nproc": os.cpu_count(),
            "malloc_tuned_all": args.malloc_tuned_all,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    try:
        import torch  # noqa: PLC0415

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["loadavg"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        info["loadavg"] = None
    return info


def format_table(rows, gemm_gflops) -> str:
    head = ("| cfg | cell | framework | tokens/s | ms/step (median, IQR) | GFLOP/s (% of GEMM) "
            "| gen ms/token (median, IQR) | peak MiB | transient MiB | x torch | x reference |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_case = {}
    for r in rows:
        by_case.setdefault((r["config"], r["cell"]), {})[r["framework"]] = r
    for (config, cell), fws in by_case.items():
        for fw, r in fws.items():
            ratio = {k: (r["tokens_per_s"] / fws[k]["tokens_per_s"] if k in fws and k != fw else None)
                     for k in ("torch", "reference")}
            frac = f" ({100 * r['gflops'] / gemm_gflops:.0f}%)" if gemm_gflops else ""
            peak = "?" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}"
            trans = f"{r['transient_mib']:.0f}" if "transient_mib" in r else "-"
            lines.append(
                f"| {config} | {cell} | {fw} | {r['tokens_per_s']:,.0f} | {r['train']['median_ms']:.1f} "
                f"({r['train']['iqr_ms']:.1f}) | {r['gflops']:.0f}{frac} | {r['generate']['median_ms']:.3f} "
                f"({r['generate']['iqr_ms']:.3f}) | {peak} | {trans} | "
                + " | ".join("-" if v is None else f"{v:.2f}" for v in ratio.values()) + " |")
    return "\n".join(lines)


def _int_at_least(low: int):
    """An argparse ``type=``: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}; expected an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}; expected an integer >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default="S,M,C", help="comma-separated subset of S,M,C")
    parser.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated subset of lstm,gru,rnn")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="subset of rnnkit,torch,reference")
    parser.add_argument("--threads", type=_int_at_least(1), default=2, help="BLAS/OpenMP threads for every framework")
    parser.add_argument("--rounds", type=_int_at_least(1), default=5, help="interleaved rounds per case")
    parser.add_argument("--steps", type=_int_at_least(0), default=0,
                        help="training steps per round (0: per-config default)")
    parser.add_argument("--gen-tokens", type=_int_at_least(1), default=50, help="generated tokens per round")
    parser.add_argument("--warmup", type=_int_at_least(0), default=2, help="untimed training steps before the rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall clock (default), or the worker's CPU time: steadier on a shared machine, "
                             "exact with --threads 1 (with more threads it also counts BLAS threads' spinning)")
    parser.add_argument("--malloc-tuned-all", action="store_true",
                        help="give every framework's worker the glibc malloc settings rnnkit's native kernels set "
                             "for themselves (keep freed memory, no mmap of big blocks), to see what they are worth "
                             "to the others")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    if args.worker:
        return worker(args)
    configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for name, values, allowed in (("config", configs, CONFIGS), ("cell", cells, GATES), ("framework", frameworks, FRAMEWORKS)):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise SystemExit(f"unknown {name} {bad[0]!r}; expected one of {', '.join(allowed)}")
    if args.json:
        folder = Path(args.json).resolve().parent
        if Path(args.json).is_dir():
            raise SystemExit(f"--json {args.json!r} is a folder; expected the path of a JSON file to write")
        if not folder.is_dir():
            raise SystemExit(f"--json {args.json!r}: no folder {str(folder)!r}; expected the path of a file "
                             "in an existing folder")
    notes = []
    env = environment(args)
    if "torch" in frameworks and env["torch"] is None:
        frameworks.remove("torch")
        notes.append("PyTorch is not installed: torch skipped (pip install torch)")
    reference = find_reference()
    if "reference" in frameworks and reference is None:
        frameworks.remove("reference")
        notes.append("benchmarks/reference_dl2.py not found (run from the repository root): reference skipped")
    if not frameworks:
        raise SystemExit("rnnkit bench: nothing left to run: " + "; ".join(notes))
    if env["OPENBLAS_CORETYPE"]:
        notes.append(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} is set: OpenBLAS runs that kernel, not the one "
                     "for this CPU; unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this command to measure the machine")
    print("environment:", json.dumps(env), flush=True)
    gemm = Worker("gemm", "S", "lstm", args, None).read()
    print(f"GEMM (sgemm {gemm['n']}^3, {args.threads} threads): NumPy {gemm['numpy_gflops']:.0f} GFLOP/s"
          + (f", PyTorch {gemm['torch_gflops']:.0f} GFLOP/s" if gemm.get("torch_gflops") else "")
          + f"; NumPy BLAS: {json.dumps(gemm['blas']['pools'])}", flush=True)
    for note in notes:
        print("note:", note, flush=True)
    rows = []
    for config in configs:
        for cell in cells:
            case = run_case(config, cell, frameworks, args, reference)
            rows += case
            print(format_table(case, gemm["numpy_gflops"]).split("\n", 2)[-1], flush=True)
    kernel_info = next((r["blas"] for r in rows if r["framework"] == "rnnkit"), None)
    if kernel_info:
        print(f"rnnkit kernels: {kernel_info.get('rnnkit_kernels')} (native: {kernel_info.get('native')})")
    print("\n" + format_table(rows, gemm["numpy_gflops"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "gemm": gemm, "notes": notes, "rows": rows}, fh, indent=1)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rnnkit bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
