"""Pointwise cell math, NumPy reference (the fast path, ``fused``, is tested against it).

Each function takes the gate pre-activations of one time step (the GEMMs are done by
the caller) and writes its results into caller-owned buffers, so the time loop of a
recurrent layer allocates nothing per step. The same functions are the one-step cells'
math, and the oracle any faster kernel (CuPy, fused) is tested against.

Symbols follow DESIGN.md: for the LSTM, ``A`` holds the pre-activations of the gates in
PyTorch's order ``i, f, g, o`` along the last axis; the GRU's ``r, z, n``.
"""
from __future__ import annotations

import numpy as np


def sigmoid(x, out=None):
    """Logistic function via tanh: sigma(x) = (1 + tanh(x / 2)) / 2.

    One transcendental per element, and no overflow warning for large |x| (exp(-x) would).
    """
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


# --------------------------------------------------------------------------- RNN
def rnn_forward(a, nonlinearity: str, out):
    """h = act(a); ``a`` is ``x W_ih^T + b_ih + h_prev W_hh^T + b_hh`` (B, H)."""
    if nonlinearity == "tanh":
        return np.tanh(a, out=out)
    return np.maximum(a, 0.0, out=out)


def rnn_backward(h, dh, nonlinearity: str, out):
    """da = dh * act'(a), written with the output h: tanh' = 1 - h^2, relu' = [h > 0]."""
    if nonlinearity == "tanh":
        np.multiply(h, h, out=out)
        np.subtract(1.0, out, out=out)
        out *= dh
        return out
    return np.multiply(dh, h > 0, out=out)


# -------------------------------------------------------------------------- LSTM
def lstm_forward(A, c_prev, c_out, tanh_c_out, h_out):
    """Activate the gates in place and advance the cell.

    A (B, 4H) pre-activations -> activated gates [i, f, g, o] (in place);
    c = f * c_prev + i * g;  h = o * tanh(c).
    """
    H = A.shape[-1] // 4
    sigmoid(A[:, : 2 * H], out=A[:, : 2 * H])  # i, f
    np.tanh(A[:, 2 * H : 3 * H], out=A[:, 2 * H : 3 * H])  # g
    sigmoid(A[:, 3 * H :], out=A[:, 3 * H :])  # o
    i, f, g, o = A[:, :H], A[:, H : 2 * H], A[:, 2 * H : 3 * H], A[:, 3 * H :]
    np.multiply(f, c_prev, out=c_out)
    c_out += i * g
    np.tanh(c_out, out=tanh_c_out)
    np.multiply(o, tanh_c_out, out=h_out)
    return h_out


def lstm_backward(gates, c_prev, tanh_c, dh, dc, dA_out, dc_prev_out, work=None):
    """Gradients of one LSTM step.

    gates (B, 4H) activated [i, f, g, o]; dh, dc: gradients reaching h_t and c_t
    (dc may be None). Writes dA (B, 4H), the gradient of the pre-activations, and
    dc_prev = dc_total * f. ``dA_out`` may be ``gates`` (consumed). ``work`` (a scratch
    buffer for faster kernels) is unused here.
    """
    if np.shares_memory(gates, dA_out):  # dA written over the gates: read them from a copy
        gates = gates.copy()
    H = gates.shape[-1] // 4
    i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
    dA_i, dA_f, dA_g, dA_o = dA_out[:, :H], dA_out[:, H : 2 * H], dA_out[:, 2 * H : 3 * H], dA_out[:, 3 * H :]
    # dc_total = dc + dh * o * (1 - tanh(c)^2), built in dc_prev_out to avoid a temporary
    dct = dc_prev_out
    np.multiply(tanh_c, tanh_c, out=dct)
    np.subtract(1.0, dct, out=dct)
    dct *= o
    dct *= dh
    if dc is not None:
        dct += dc
    np.multiply(dh, tanh_c, out=dA_o)  # do
    dA_o *= o * (1.0 - o)
    np.multiply(dct, g, out=dA_i)  # di
    dA_i *= i * (1.0 - i)
    np.multiply(dct, i, out=dA_g)  # dg
    dA_g *= 1.0 - g * g
    np.multiply(dct, c_prev, out=dA_f)  # df
    dA_f *= f * (1.0 - f)
    dct *= f  # dc_prev
    return dA_out, dc_prev_out


# --------------------------------------------------------------------------- GRU
def gru_forward(xw, hw, h_prev, gates_out, h_out):
    """One GRU step (PyTorch variant).

    xw = x W_ih^T + b_ih and hw = h_prev W_hh^T + b_hh, both (B, 3H) in order [r, z, n].
    r = sigma(xw_r + hw_r), z = sigma(xw_z + hw_z), n = tanh(xw_n + r * hw_n),
    h = (1 - z) * n + z * h_prev = n + z * (h_prev - n).
    gates_out (B, 3H) receives [r, z, n].
    """
    H = h_prev.shape[-1]
    rz = gates_out[:, : 2 * H]
    np.add(xw[:, : 2 * H], hw[:, : 2 * H], out=rz)
    sigmoid(rz, out=rz)
    r, z, n = gates_out[:, :H], gates_out[:, H : 2 * H], gates_out[:, 2 * H :]
    np.multiply(r, hw[:, 2 * H :], out=n)
    n += xw[:, 2 * H :]
    np.tanh(n, out=n)
    np.subtract(h_prev, n, out=h_out)
    h_out *= z
    h_out += n
    return h_out


def gru_backward(gates, hw_n, h_prev, dh, dxw_out, dhw_out):
    """Gradients of one GRU step.

    gates (B, 3H) [r, z, n]; hw_n = h_prev W_hn^T + b_hn (B, H); dh (B, H) reaching h_t.
    Writes dxw (B, 3H), the gradient of x W_ih^T + b_ih, and dhw (B, 3H), that of
    h_prev W_hh^T + b_hh. The direct path dh * z to h_prev is left to the caller.
    """
    H = dh.shape[-1]
    r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
    dar, daz, dan = dxw_out[:, :H], dxw_out[:, H : 2 * H], dxw_out[:, 2 * H :]
    np.subtract(1.0, z, out=dan)  # dn = dh * (1 - z)
    dan *= dh
    dan *= 1.0 - n * n  # through tanh
    np.subtract(h_prev, n, out=daz)  # dz = dh * (h_prev - n)
    daz *= dh
    daz *= z * (1.0 - z)
    np.multiply(dan, hw_n, out=dar)  # dr = dan * hw_n
    dar *= r * (1.0 - r)
    dhw_out[:, : 2 * H] = dxw_out[:, : 2 * H]
    np.multiply(dan, r, out=dhw_out[:, 2 * H :])
    return dxw_out, dhw_out
