"""Optimizers, gradient clipping and learning-rate schedules.

Optimizers walk ``model.named_parameters()`` and update parameters in place from the
accumulated gradients. Their state (moments, step counts) is keyed by the same dotted
names, so ``state_dict()`` goes into a checkpoint beside the weights.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend, kernels


_NORM_CHUNK = 1 << 16


def _sum_of_squares(g):
    """``sum(g**2)`` accumulated in float64, without a float64 copy of the whole gradient
    (a float, or for a CuPy array a 0-d device array: no wait for the device per tensor).

    float64 gradients go to one dot product; narrower ones are cast chunk by chunk into a
    small float64 buffer (the float32 dot product alone would lose digits on big tensors).
    """
    if kernels.native_for(g):  # float64 sums of fixed chunks, on every core (same for any thread count)
        return kernels.native.sum_squares(g)
    xp = backend.get_array_module(g)
    flat = g.reshape(-1)
    if xp is not np:  # on the device, left there: clip_grad_norm waits for the device once, for the total
        flat64 = flat.astype(xp.float64, copy=False)
        return xp.dot(flat64, flat64)
    if g.dtype == xp.float64:
        return float(xp.dot(flat, flat))
    buf = np.empty(min(flat.size, _NORM_CHUNK), dtype=np.float64)
    total = 0.0
    for start in range(0, flat.size, _NORM_CHUNK):
        chunk = buf[: min(_NORM_CHUNK, flat.size - start)]
        chunk[...] = flat[start : start + len(chunk)]
        total += float(np.dot(chunk, chunk))
    return total


def clip_grad_norm(model, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (the number worth logging: it shows explosions).
    """
    grads = [g for _, _, g in model.named_parameters()]
    on_gpu = bool(grads) and backend.get_array_module(grads[0]) is not np
    device_total = kernels.cuda.sum_squares(grads) if on_gpu else None  # one kernel a tensor, one wait
    if device_total is not None:
        total = math.sqrt(float(device_total))
    else:
        total = math.sqrt(float(sum(_sum_of_squares(g) for g in grads)))
    if max_norm is not None and max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            if kernels.native_for(g):
                kernels.native.scale(g, scale)
            else:
                g *= scale
    return total


class Optimizer:
    slots: tuple[str, ...] = ()  # the per-parameter state it keeps (checked when a state is loaded)

    def __init__(self, model, lr: float):
        if not lr > 0:
            raise ValueError(f"learning rate {lr!r}; expected lr > 0")
        self.model = model
        self.lr = float(lr)
        self.step_count = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def step(self) -> None:
        self.step_count += 1
        for name, p, g in self.model.named_parameters():
            self._update(name, p, g)

    def _update(self, name, p, g) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _buffer(self, name, key, like):
        slot = self.state.setdefault(name, {})
        if key not in slot:
            slot[key] = backend.get_array_module(like).zeros_like(like)
        return slot[key]

    def state_dict(self) -> dict:
        """``{"scalars": {...JSON-able...}, "tensors": {"<param>.<slot>": array}}``."""
        tensors = {f"{name}.{key}": v for name, slots in self.state.items() for key, v in slots.items()}
        return {"scalars": {"lr": self.lr, "step_count": self.step_count}, "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`, all or nothing: every tensor must belong to a parameter of the
        model, be one of this optimizer's ``slots`` and have its parameter's shape."""
        kind = type(self).__name__
        if not isinstance(state, dict) or not {"scalars", "tensors"} <= set(state):
            raise ValueError(f"{kind} state is {type(state).__name__} with keys "
                             f"{sorted(state) if isinstance(state, dict) else '-'}; expected 'scalars' and 'tensors'")
        names = {name: p for name, p, _ in self.model.named_parameters()}
        loaded = {}
        for key, value in state["tensors"].items():
            name, _, slot = key.rpartition(".")
            if name not in names:
                raise KeyError(f"{kind} state for unknown parameter {name!r}")
            if slot not in self.slots:
                raise ValueError(f"{kind} state {key!r}: slot {slot!r} is not one of {kind}'s {list(self.slots)} "
                                 "(a state saved by another optimizer?)")
            if tuple(value.shape) != tuple(names[name].shape):
                raise ValueError(f"{kind} state {key!r} has shape {tuple(value.shape)}; expected "
                                 f"{tuple(names[name].shape)}, its parameter's")
            xp = backend.get_array_module(names[name])
            loaded.setdefault(name, {})[slot] = xp.asarray(value, dtype=names[name].dtype)
        self.lr = float(state["scalars"]["lr"])
        self.step_count = int(state["scalars"]["step_count"])
        self.state = loaded


class SGD(Optimizer):
    """``v = mu v + g``; ``p -= lr * (g + mu v if nesterov else v)`` (PyTorch's form)."""

    slots = ("momentum",)

    def __init__(self, model, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(model, lr)
        if nesterov and momentum <= 0:
            raise ValueError(f"nesterov=True needs momentum > 0; got momentum {momentum}")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def _update(self, name, p, g) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            v = self._buffer(name, "momentum", p)
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        if kernels.native_for(p, g):  # the same roundings as below, on every core
            kernels.native.sub_scaled(p, self.lr, g)
        elif backend.get_array_module(p) is np or not kernels.cuda.sgd_step(p, g, self.lr):
            p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is L2 added to the gradient."""

    decoupled = False
    slots = ("exp_avg", "exp_avg_sq")

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(model, lr)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def _update(self, name, p, g) -> None:
        b1, b2 = self.betas
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p
        if self.weight_decay and self.decoupled:
            p *= 1.0 - self.lr * self.weight_decay
        m = self._buffer(name, "exp_avg", p)
        v = self._buffer(name, "exp_avg_sq", p)
        t = self.step_count
        if kernels.native_for(p, g, m, v):  # the same roundings as below, one pass on every core
            kernels.native.adam_step(p, g, m, v, b1, b2, self.eps, 1 - b2**t, self.lr / (1 - b1**t))
            return
        if backend.get_array_module(p) is not np and kernels.cuda.adam_step(p, g, m, v, b1, b2, self.eps, 1 - b2**t,
                                                                            self.lr / (1 - b1**t)):
            return  # on the GPU: the same formulas, one launch
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        t = self.step_count
        step = self.lr / (1 - b1**t)
        denom = backend.get_array_module(v).sqrt(v / (1 - b2**t))
        denom += self.eps
        p -= step * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * wd`` each step."""

    decoupled = True

    def __init__(self, model, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(model, lr, betas, eps, weight_decay)


# ------------------------------------------------------------------ schedules
class _Schedule:
    """A learning-rate schedule. Its state (``state_dict``) is its progress only: the step it is
    at, the base rate and ``lr_scale``, the product of the rollbacks' scalings of it (plateau: also
    the best metric and the calls without improvement). The hyper-parameters (``params()``) come
    from the constructor, i.e. the current config: a run resumed with other ones goes on with them."""

    PROGRESS: tuple[str, ...] = ("base_lr", "last_step", "lr_scale")

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0
        self.lr_scale = 1.0

    def scale(self, factor: float) -> None:
        """Multiply every learning rate this schedule will set by ``factor`` (a divergence rollback
        halves them); the optimizer's current rate is the caller's to set."""
        self.base_lr *= factor
        self.lr_scale *= factor

    def params(self) -> dict:
        """The hyper-parameters (everything but the progress)."""
        return {k: v for k, v in vars(self).items() if k != "optimizer" and k not in self.PROGRESS}

    def rate(self) -> float:
        """The learning rate this schedule sets at its current step (with its current parameters)."""
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.PROGRESS}

    def load_state_dict(self, state: dict) -> None:
        """Restore the progress; the hyper-parameters stay this schedule's own (an older
        checkpoint's full state is read for its progress only)."""
        for k in self.PROGRESS:
            if k in state:
                setattr(self, k, type(getattr(self, k))(state[k]))


class StepLR(_Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` calls to ``step()``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        if step_size < 1:
            raise ValueError(f"step_size {step_size}; expected >= 1")
        if not 0 < gamma < math.inf:
            raise ValueError(f"gamma {gamma!r}; expected > 0")
        self.step_size, self.gamma = step_size, gamma

    def rate(self) -> float:
        return self.base_lr * self.gamma ** (self.last_step // self.step_size)

    def step(self, metric=None) -> float:
        self.last_step += 1
        self.optimizer.lr = self.rate()
        return self.optimizer.lr


class ReduceLROnPlateau(_Schedule):
    """Divide the learning rate when a metric (lower is better) stops improving.

    After ``patience`` calls without an improvement larger than ``threshold`` (relative),
    ``lr *= factor`` (not below ``min_lr``). DL2 trains PTB with factor 0.25, patience 0.
    """

    PROGRESS = (*_Schedule.PROGRESS, "best", "bad_steps")

    def __init__(self, optimizer, factor: float = 0.25, patience: int = 0, min_lr: float = 0.0,
                 threshold: float = 1e-4):
        super().__init__(optimizer)
        if not 0 < factor < 1:
            raise ValueError(f"factor {factor}; expected 0 < factor < 1")
        self.factor, self.patience, self.min_lr, self.threshold = factor, patience, min_lr, threshold
        self.best = math.inf
        self.bad_steps = 0

    def rate(self) -> float:
        """The optimizer's rate (the schedule only ever multiplies it), not below ``min_lr``."""
        return max(self.optimizer.lr, self.min_lr)

    def step(self, metric=None) -> float:
        if metric is None:
            raise ValueError("ReduceLROnPlateau.step needs the metric (e.g. validation loss)")
        self.last_step += 1
        if metric < self.best * (1 - self.threshold):
            self.best, self.bad_steps = float(metric), 0
        else:
            self.bad_steps += 1
            if self.bad_steps > self.patience:
                self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
                self.bad_steps = 0
        return self.optimizer.lr


class CosineLR(_Schedule):
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``.

    Resumed with another ``total_steps`` (a run extended with more epochs or steps), the
    cosine is recomputed over the new total from the step reached: the rate jumps to the
    new curve's value there (up from ``min_lr`` when a finished run is extended).
    """

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        super().__init__(optimizer)
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"total_steps {total_steps}, warmup_steps {warmup_steps}; need 0 <= warmup <= total, total >= 1")
        self.total_steps, self.warmup_steps, self.min_lr = total_steps, warmup_steps, min_lr
        if warmup_steps:
            optimizer.lr = self.base_lr / warmup_steps

    def scale(self, factor: float) -> None:
        super().scale(factor)
        self.min_lr = min(self.min_lr, self.base_lr)  # the decay still ends at or below where it starts

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.lr_scale < 1:  # as scale() left it
            self.min_lr = min(self.min_lr, self.base_lr)

    def rate(self) -> float:
        s = self.last_step
        if s < self.warmup_steps:
            return self.base_lr * (s + 1) / self.warmup_steps
        progress = min(1.0, (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def step(self, metric=None) -> float:
        self.last_step += 1
        self.optimizer.lr = lr = self.rate()
        return lr
