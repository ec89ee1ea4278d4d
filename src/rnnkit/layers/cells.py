"""One-step cells: RNNCell, LSTMCell, GRUCell.

A cell advances the state by one time step; the math is the same code the unrolled
layers run (``unroll`` with T = 1), so the two can never disagree. Parameter names
and layouts are PyTorch's (``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H),
``bias_ih``, ``bias_hh``).

Each ``forward`` pushes its cache on a stack and each ``backward`` pops the latest, so
a cell can be stepped T times (a decoder feeding back its own predictions) and then
back-propagated T times in reverse order, with no per-step layer objects.
"""
from __future__ import annotations

import math

from .. import backend
from ._checks import check_flag, check_float_input, check_grad_shape, check_size
from .base import Layer
from .recurrent import init_uniform
from .unroll import GATES, unroll_backward, unroll_forward


class _Cell(Layer):
    mode = "rnn"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 dtype=None, rng=None, seed=None):
        super().__init__()
        input_size, hidden_size = check_size(input_size, "input_size"), check_size(hidden_size, "hidden_size")
        bias = check_flag(bias, "bias")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.input_size, self.hidden_size, self.bias, self.nonlinearity = input_size, hidden_size, bias, nonlinearity
        dtype = dtype or backend.get_default_dtype()
        rng = rng if rng is not None else backend.default_rng(seed)
        G, bound = GATES[self.mode] * hidden_size, 1.0 / math.sqrt(hidden_size)
        xp = backend.xp_for()
        shapes = [("weight_ih", (G, input_size)), ("weight_hh", (G, hidden_size))]
        if bias:
            shapes += [("bias_ih", (G,)), ("bias_hh", (G,))]
        for name, shape in shapes:
            self.add_param(name, xp.asarray(init_uniform(rng, shape, bound, dtype)))
        self._stack = []

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.mode == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s + ("" if self.bias else ", bias=False")

    def reset_cache(self) -> None:
        """Drop cached steps (e.g. after a forward pass used only for inference)."""
        self._stack.clear()

    def _on_to(self, dtype, device) -> None:
        self._stack.clear()

    def forward(self, x, state=None):
        """One step. x (B, input_size); state (B, H) (LSTM: tuple (h, c)); returns the new state."""
        check_float_input(x, "x", 2, self.input_size, self.dtype)
        B, H, xp = x.shape[0], self.hidden_size, self.xp
        if state is None:
            h0 = xp.zeros((B, H), dtype=self.dtype)
            c0 = xp.zeros((B, H), dtype=self.dtype) if self.mode == "lstm" else None
        elif self.mode == "lstm":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"LSTMCell state is a {type(state).__name__}; expected a tuple (h, c) of ({B}, {H}) arrays")
            h0, c0 = (check_float_input(s, n, 2, H, self.dtype) for s, n in zip(state, ("h", "c")))
        else:
            h0, c0 = check_float_input(state, "h", 2, H, self.dtype), None
        if h0.shape[0] != B or (c0 is not None and c0.shape[0] != B):
            raise ValueError(f"state batch {h0.shape[0]}; expected {B} (the batch of x)")
        p = self.params
        _, h, c, cache = unroll_forward(self.mode, x[None], p["weight_ih"], p["weight_hh"], p.get("bias_ih"),
                                        p.get("bias_hh"), h0, c0, nonlinearity=self.nonlinearity)
        self._stack.append(cache)
        return (h, c) if self.mode == "lstm" else h

    def backward(self, dstate, dc=None):
        """Back through the most recent un-backpropagated step.

        dstate: gradient of the new state, (B, H) exactly as the step's state (LSTM: tuple
        (dh, dc), dc may be None; or ``backward(dh, dc)``); None: zeros. A shape that is not
        the step's is a ValueError (and the step stays cached), never a broadcast.
        Returns (dx (B, input_size), dstate_prev) — the gradient of the previous state.
        """
        if not self._stack:
            raise RuntimeError("backward called more times than forward")
        cache = self._stack[-1]
        shape = tuple(cache.Hs.shape[1:])  # (B, H) of the step
        if self.mode == "lstm" and isinstance(dstate, (tuple, list)):
            if len(dstate) != 2 or dc is not None:
                raise ValueError("LSTMCell.backward takes dstate (dh, dc) or backward(dh, dc); got "
                                 + (f"a {type(dstate).__name__} of length {len(dstate)}" if len(dstate) != 2
                                    else "dc twice, in the tuple and as an argument"))
            dh, dc = dstate
        else:
            if self.mode != "lstm" and dc is not None:
                raise ValueError(f"dc given to a {type(self).__name__}, which has no cell state")
            dh = dstate
        if dh is not None:
            check_grad_shape(dh, "dstate dh" if self.mode == "lstm" else "dstate", shape,
                             " (batch, hidden_size) of the step")
        if dc is not None:
            check_grad_shape(dc, "dstate dc", shape, " (batch, hidden_size) of the step")
        self._stack.pop()
        dX, dh0, dc0 = unroll_backward(cache, None, dh, dc, self.grads,
                                       ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        return dX[0], ((dh0, dc0) if self.mode == "lstm" else dh0)


class RNNCell(_Cell):
    """``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act = tanh (default) or relu."""

    mode = "rnn"


class LSTMCell(_Cell):
    """One LSTM step, gates ``i, f, g, o``: ``c' = f*c + i*g``, ``h' = o*tanh(c')``."""

    mode = "lstm"

    def __init__(self, input_size, hidden_size, bias=True, dtype=None, rng=None, seed=None):
        super().__init__(input_size, hidden_size, bias, "tanh", dtype, rng, seed)


class GRUCell(_Cell):
    """One GRU step, gates ``r, z, n``: ``h' = (1-z)*n + z*h``."""

    mode = "gru"

    def __init__(self, input_size, hidden_size, bias=True, dtype=None, rng=None, seed=None):
        super().__init__(input_size, hidden_size, bias, "tanh", dtype, rng, seed)
