"""A single-layer vanilla RNN with a choice of activation: tanh, sigmoid or relu.

The :class:`rnnkit.RNN` layer offers tanh and relu, as PyTorch does; the gradient-flow
experiment (``gradflow.py``) also compares the sigmoid, which saturates at both ends and
whose derivative is at most 1/4. This is that layer and its one-step cell, written
plainly (no fused kernels) with their own BPTT, checked against finite differences and,
for tanh and relu, against :class:`rnnkit.RNN` (``tests/test_gradflow.py``).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..kernels.pointwise import sigmoid
from ..layers.base import Layer

# act(a) and act'(a) written with the output h = act(a), as the backward only keeps h
ACTIVATIONS = {
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
    "sigmoid": (sigmoid, lambda h: h * (1.0 - h)),
    "relu": (lambda a: np.maximum(a, 0.0), lambda h: (h > 0).astype(h.dtype)),
}


def _init_activation_layer(layer: Layer, input_size, hidden_size, nonlinearity, bias, suffix, dtype, rng,
                           seed) -> None:
    """The shared start of the cell and the layer: check the activation, set the sizes, and add
    the weights (names with ``suffix``) with PyTorch's RNN init."""
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(f"nonlinearity {nonlinearity!r}; expected one of {sorted(ACTIVATIONS)}")
    layer.input_size, layer.hidden_size, layer.nonlinearity, layer.bias = input_size, hidden_size, nonlinearity, bias
    dtype = dtype or backend.get_default_dtype()
    rng = rng if rng is not None else backend.default_rng(seed)
    bound = 1.0 / math.sqrt(hidden_size)  # PyTorch's init, as the RNN layer
    shapes = [("weight_ih", (hidden_size, input_size)), ("weight_hh", (hidden_size, hidden_size))]
    if bias:
        shapes += [("bias_ih", (hidden_size,)), ("bias_hh", (hidden_size,))]
    for name, shape in shapes:
        layer.add_param(name + suffix, rng.uniform(-bound, bound, size=shape).astype(dtype))


def activation_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity: str):
    """``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``; x (B, D), h (B, H)."""
    a = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        a += b_ih + b_hh
    return ACTIVATIONS[nonlinearity][0](a)


def activation_step_backward(dh_new, x, h, h_new, w_ih, w_hh, nonlinearity: str):
    """Gradients of one step: returns (da, dx, dh) with ``da = dh' * act'(a)``, ``dx = da W_ih``, ``dh = da W_hh``."""
    da = dh_new * ACTIVATIONS[nonlinearity][1](h_new)
    return da, da @ w_ih, da @ w_hh


class ActivationRNNCell(Layer):
    """One vanilla RNN step with a choice of activation: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    act = tanh | sigmoid | relu. Same protocol as :class:`rnnkit.RNNCell`: ``forward(x (B, D),
    h (B, H) or None) -> h'`` pushes a cache, ``backward(dh') -> (dx, dh)`` pops the latest.
    """

    mode = "rnn"

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True,
                 dtype=None, rng=None, seed=None):
        super().__init__()
        _init_activation_layer(self, input_size, hidden_size, nonlinearity, bias, "", dtype, rng, seed)
        self._stack = []

    def forward(self, x, state=None):
        p = self.params
        h = np.zeros((x.shape[0], self.hidden_size), dtype=x.dtype) if state is None else state
        h_new = activation_step(x, h, p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"),
                                self.nonlinearity)
        self._stack.append((x, h, h_new))
        return h_new

    def backward(self, dstate):
        if not self._stack:
            raise RuntimeError("backward called more times than forward")
        x, h, h_new = self._stack.pop()
        p, g = self.params, self.grads
        da, dx, dh = activation_step_backward(dstate, x, h, h_new, p["weight_ih"], p["weight_hh"], self.nonlinearity)
        g["weight_ih"] += da.T @ x
        g["weight_hh"] += da.T @ h
        if self.bias:
            g["bias_ih"] += da.sum(axis=0)
            g["bias_hh"] += da.sum(axis=0)
        return dx, dh


class ActivationRNN(Layer):
    """Single-layer vanilla RNN over a sequence, activation tanh | sigmoid | relu.

    ``y, h_n = forward(x (B, T, D), state=None (1, B, H))``; ``dx = backward(dy (B, T, H) or None,
    dstate=None (1, B, H))``, the initial state's gradient in ``dstate0``. Parameter names are
    the RNN layer's (``weight_ih_l0`` ...), so it stands where an ``RNN(num_layers=1)`` goes.
    A plain loop over :func:`activation_step`: it exists for analysis, not speed.
    """

    mode = "rnn"
    num_layers, num_directions, bidirectional, stateful = 1, 1, False, False

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True,
                 dtype=None, rng=None, seed=None):
        super().__init__()
        _init_activation_layer(self, input_size, hidden_size, nonlinearity, bias, "_l0", dtype, rng, seed)
        self._cache = None
        self.dstate0 = None

    def reset_state(self) -> None:
        """No carried state (not stateful); here for the recurrent-layer protocol."""

    def _weights(self):
        p = self.params
        return p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"), p.get("bias_hh_l0")

    def forward(self, x, state=None):
        B, T, _ = x.shape
        Hs = np.empty((T + 1, B, self.hidden_size), dtype=x.dtype)  # Hs[t] = state before step t
        Hs[0] = 0.0 if state is None else state[0]
        for t in range(T):
            Hs[t + 1] = activation_step(x[:, t], Hs[t], *self._weights(), self.nonlinearity)
        self._cache = (x, Hs)
        return np.ascontiguousarray(Hs[1:].transpose(1, 0, 2)), Hs[T][None].copy()

    def backward(self, dy=None, dstate=None):
        if self._cache is None:
            raise RuntimeError("backward called before forward (or twice for one forward)")
        x, Hs = self._cache
        w_ih, w_hh, _, _ = self._weights()
        B, T, _ = x.shape
        dh = np.zeros((B, self.hidden_size), dtype=x.dtype) if dstate is None else dstate[0].astype(x.dtype)
        dx, dA = np.empty_like(x), np.empty((T, B, self.hidden_size), dtype=x.dtype)
        for t in range(T - 1, -1, -1):
            if dy is not None:
                dh = dh + dy[:, t]
            dA[t], dx[:, t], dh = activation_step_backward(dh, x[:, t], Hs[t], Hs[t + 1], w_ih, w_hh,
                                                           self.nonlinearity)
        # weight gradients as one GEMM each over all steps
        g = self.grads
        g["weight_ih_l0"] += np.einsum("tbh,btd->hd", dA, x)
        g["weight_hh_l0"] += np.einsum("tbh,tbk->hk", dA, Hs[:-1])
        if self.bias:
            g["bias_ih_l0"] += dA.sum(axis=(0, 1))
            g["bias_hh_l0"] += dA.sum(axis=(0, 1))
        self._cache = None
        self.dstate0 = dh[None]
        return dx
