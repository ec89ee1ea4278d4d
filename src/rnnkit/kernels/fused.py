"""Fused pointwise cell math: the fast path, same contract as ``pointwise`` (the reference).

Same functions, same arguments, same results (bit for bit where the comments say so;
``tests/test_kernels.py`` checks them against ``pointwise``). What differs is how many
array passes a step costs. NumPy runs each ufunc call as one loop; a call on a gate
slice ``A[:, H:2H]`` of a (B, 4H) row-major array loops row by row, so the reference's
14 calls on slices cost several times their arithmetic. Here the activations of all
gates are four calls over the whole contiguous (B, 4H) block, with per-column
constants:

    sigma(a) = 0.5 * tanh(0.5 * a) + 0.5     (i, f, o columns)
    tanh(a)  = 1.0 * tanh(1.0 * a) + 0.0     (g columns)

Scaling by 0.5 or 1 is exact in binary floating point, so the activated gates equal the
reference's ``(tanh(a / 2) + 1) / 2`` exactly. The backward's local derivatives are one
expression too, from the activated output ``y``: ``y * (c1 - y) + c0`` with
``(c1, c0) = (1, 0)`` for a sigmoid (``y (1 - y)``) and ``(0, 1)`` for tanh (``1 - y^2``).
"""
from __future__ import annotations

import numpy as np

from .. import backend
# the GRU and plain RNN steps gain nothing measurable from this treatment: the reference's are used
from .pointwise import gru_backward, gru_forward, rnn_backward, rnn_forward  # noqa: F401

_CONSTANTS: dict = {}


def _gate_constants(xp, dtype, H: int, gates: str):
    """Per-column rows (len(gates) * H,) for the gate layout, e.g. "ifgo": scale, shift, c1, c0."""
    key = (xp.__name__, np.dtype(dtype).str, H, gates)
    if key not in _CONSTANTS:
        is_sigmoid = np.repeat([g != "g" and g != "n" for g in gates], H)
        scale = np.where(is_sigmoid, 0.5, 1.0)
        shift = np.where(is_sigmoid, 0.5, 0.0)
        c1 = np.where(is_sigmoid, 1.0, 0.0)
        c0 = np.where(is_sigmoid, 0.0, 1.0)
        _CONSTANTS[key] = tuple(xp.asarray(v, dtype=dtype) for v in (scale, shift, c1, c0))
    return _CONSTANTS[key]


def activate(A, gates: str):
    """In place: sigmoid on every gate column except "g"/"n" (tanh), four calls in all."""
    xp = backend.get_array_module(A)
    scale, shift, _, _ = _gate_constants(xp, A.dtype, A.shape[-1] // len(gates), gates)
    xp.multiply(A, scale, out=A)
    xp.tanh(A, out=A)
    xp.multiply(A, scale, out=A)
    xp.add(A, shift, out=A)
    return A


def activation_grad(Y, gates: str, out):
    """``out`` = the derivative of each activation at its output ``Y``: y(1-y) or 1-y^2."""
    xp = backend.get_array_module(Y)
    _, _, c1, c0 = _gate_constants(xp, Y.dtype, Y.shape[-1] // len(gates), gates)
    xp.subtract(c1, Y, out=out)
    out *= Y
    out += c0
    return out


# -------------------------------------------------------------------------- LSTM
def lstm_forward(A, c_prev, c_out, tanh_c_out, h_out):
    """Activate the gates in place and advance the cell (contract of ``pointwise.lstm_forward``).

    A (B, 4H) pre-activations -> activated gates [i, f, g, o] (in place);
    c = f * c_prev + i * g;  h = o * tanh(c).
    """
    xp = backend.get_array_module(A)
    H = A.shape[-1] // 4
    activate(A, "ifgo")
    i, f, g, o = A[:, :H], A[:, H : 2 * H], A[:, 2 * H : 3 * H], A[:, 3 * H :]
    xp.multiply(f, c_prev, out=c_out)
    xp.multiply(i, g, out=tanh_c_out)  # scratch until tanh(c) overwrites it
    c_out += tanh_c_out
    xp.tanh(c_out, out=tanh_c_out)
    xp.multiply(o, tanh_c_out, out=h_out)
    return h_out


def lstm_backward(gates, c_prev, tanh_c, dh, dc, dA_out, dc_prev_out, work=None):
    """Gradients of one LSTM step (contract of ``pointwise.lstm_backward``).

    gates (B, 4H) activated [i, f, g, o]; dh, dc reaching h_t and c_t (dc may be None).
    Writes dA (B, 4H) and dc_prev = dc_total * f. ``work``: optional (2, B, 4H) scratch.
    ``dA_out`` may be ``gates`` itself (the time loop reuses the forward's gate buffer
    for dA): every gate is read before the last call writes dA.
    """
    xp = backend.get_array_module(gates)
    H = gates.shape[-1] // 4
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    if work is None:
        work = xp.empty((2,) + gates.shape, dtype=gates.dtype)
    upstream, local = work[0], work[1]
    dct = dc_prev_out  # dc_total = dc + dh * o * (1 - tanh(c)^2)
    xp.multiply(tanh_c, tanh_c, out=dct)
    xp.subtract(1.0, dct, out=dct)
    dct *= o
    dct *= dh
    if dc is not None:
        dct += dc
    # gradient w.r.t. each activated gate, then times the activations' derivatives at once
    xp.multiply(dct, g, out=upstream[:, :H])
    xp.multiply(dct, c_prev, out=upstream[:, H : 2 * H])
    xp.multiply(dct, i, out=upstream[:, 2 * H : 3 * H])
    xp.multiply(dh, tanh_c, out=upstream[:, 3 * H :])
    activation_grad(gates, "ifgo", local)
    dct *= f  # dc_prev
    xp.multiply(upstream, local, out=dA_out)
    return dA_out, dc_prev_out


__all__ = ["activate", "activation_grad", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
           "rnn_forward", "rnn_backward"]
