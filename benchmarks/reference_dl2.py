"""The textbook baseline: a per-step NumPy language model, "Deep Learning from Scratch 2" style.

Written from the equations, the way the textbook layers are built: a ``Time*`` layer
unrolls one Python object per time step (``LSTMStep``, ``GRUStep``, ``RNNStep``), each
with its own forward/backward and its own small weight-gradient GEMMs, accumulated over
the steps. Row-vector weights ``W_x`` (D, G*H), ``W_h`` (H, G*H), one bias ``b``.
Nothing here is tuned: it is the speed yardstick (``rnnkit bench`` reports rnnkit's
speed as a multiple of it), not a library.

Equations (gate order as PyTorch: LSTM i, f, g, o; GRU r, z, n):
  RNN   h_t = tanh(x_t W_x + h_{t-1} W_h + b)
  LSTM  A = x_t W_x + h_{t-1} W_h + b; i, f, o = sigma(.), g = tanh(.);
        c_t = f c_{t-1} + i g; h_t = o tanh(c_t)
  GRU   r = sigma(x W_xr + h W_hr + b_r), z likewise, n = tanh(x W_xn + b_xn + r (h W_hn + b_hn)),
        h_t = (1 - z) n + z h_{t-1}
"""
from __future__ import annotations

import math

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------ one step
class RNNStep:
    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]

    def forward(self, x, h_prev):
        Wx, Wh, b = self.params
        h = np.tanh(x @ Wx + h_prev @ Wh + b)
        self.cache = (x, h_prev, h)
        return h

    def backward(self, dh):
        Wx, Wh, _ = self.params
        x, h_prev, h = self.cache
        da = dh * (1 - h * h)
        self.grads[0][...] = x.T @ da
        self.grads[1][...] = h_prev.T @ da
        self.grads[2][...] = da.sum(axis=0)
        return da @ Wx.T, da @ Wh.T


class LSTMStep:
    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]

    def forward(self, x, h_prev, c_prev):
        Wx, Wh, b = self.params
        H = h_prev.shape[1]
        A = x @ Wx + h_prev @ Wh + b
        i = sigmoid(A[:, :H])
        f = sigmoid(A[:, H:2 * H])
        g = np.tanh(A[:, 2 * H:3 * H])
        o = sigmoid(A[:, 3 * H:])
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        self.cache = (x, h_prev, c_prev, i, f, g, o, c)
        return h, c

    def backward(self, dh, dc):
        Wx, Wh, _ = self.params
        x, h_prev, c_prev, i, f, g, o, c = self.cache
        tanh_c = np.tanh(c)
        ds = dc + dh * o * (1 - tanh_c ** 2)
        di = ds * g * i * (1 - i)
        df = ds * c_prev * f * (1 - f)
        dg = ds * i * (1 - g ** 2)
        do = dh * tanh_c * o * (1 - o)
        dA = np.hstack((di, df, dg, do))
        self.grads[0][...] = x.T @ dA
        self.grads[1][...] = h_prev.T @ dA
        self.grads[2][...] = dA.sum(axis=0)
        return dA @ Wx.T, dA @ Wh.T, ds * f


class GRUStep:
    """PyTorch's GRU: ``b`` is (b_x, b_hn) stacked as (4H,): b_x (3H,) then b_hn (H,)."""

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]

    def forward(self, x, h_prev):
        Wx, Wh, b = self.params
        H = h_prev.shape[1]
        xw = x @ Wx + b[:3 * H]
        hw = h_prev @ Wh
        r = sigmoid(xw[:, :H] + hw[:, :H])
        z = sigmoid(xw[:, H:2 * H] + hw[:, H:2 * H])
        hn = hw[:, 2 * H:] + b[3 * H:]
        n = np.tanh(xw[:, 2 * H:] + r * hn)
        h = (1 - z) * n + z * h_prev
        self.cache = (x, h_prev, r, z, n, hn)
        return h

    def backward(self, dh):
        Wx, Wh, _ = self.params
        x, h_prev, r, z, n, hn = self.cache
        dn = dh * (1 - z) * (1 - n ** 2)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        dxw = np.hstack((dr, dz, dn))
        dhw = np.hstack((dr, dz, dn * r))
        self.grads[0][...] = x.T @ dxw
        self.grads[1][...] = h_prev.T @ dhw
        self.grads[2][...] = np.concatenate((dxw.sum(axis=0), (dn * r).sum(axis=0)))
        return dxw @ Wx.T, dhw @ Wh.T + dh * z


# ------------------------------------------------------------------ time layers
class TimeRecurrent:
    """Unrolls one step object per time step; ``stateful`` carries h (and c) across calls."""

    def __init__(self, mode, Wx, Wh, b, stateful=True):
        self.mode = mode
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.stateful = stateful
        self.h = self.c = None
        self.step_class = {"rnn": RNNStep, "lstm": LSTMStep, "gru": GRUStep}[mode]

    def forward(self, xs):
        B, T, _ = xs.shape
        H = self.params[1].shape[0]
        self.steps = []
        hs = np.empty((B, T, H), dtype=xs.dtype)
        if not self.stateful or self.h is None:
            self.h = np.zeros((B, H), dtype=xs.dtype)
            self.c = np.zeros((B, H), dtype=xs.dtype)
        for t in range(T):
            step = self.step_class(*self.params)
            if self.mode == "lstm":
                self.h, self.c = step.forward(xs[:, t, :], self.h, self.c)
            else:
                self.h = step.forward(xs[:, t, :], self.h)
            hs[:, t, :] = self.h
            self.steps.append(step)
        return hs

    def backward(self, dhs):
        B, T, H = dhs.shape
        D = self.params[0].shape[0]
        dxs = np.empty((B, T, D), dtype=dhs.dtype)
        dh = np.zeros((B, H), dtype=dhs.dtype)
        dc = np.zeros((B, H), dtype=dhs.dtype)
        grads = [np.zeros_like(g) for g in self.grads]
        for t in reversed(range(T)):
            step = self.steps[t]
            if self.mode == "lstm":
                dx, dh, dc = step.backward(dhs[:, t, :] + dh, dc)
            else:
                dx, dh = step.backward(dhs[:, t, :] + dh)
            dxs[:, t, :] = dx
            for k, g in enumerate(step.grads):
                grads[k] += g
        for k, g in enumerate(grads):
            self.grads[k][...] = g
        return dxs


class TimeEmbedding:
    def __init__(self, W):
        self.params, self.grads = [W], [np.zeros_like(W)]

    def forward(self, ids):
        self.ids = ids
        return self.params[0][ids]

    def backward(self, dout):
        dW = self.grads[0]
        dW[...] = 0
        np.add.at(dW, self.ids.reshape(-1), dout.reshape(-1, dout.shape[-1]))


class TimeAffine:
    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]

    def forward(self, x):
        B, T, D = x.shape
        self.x = x
        return (x.reshape(B * T, D) @ self.params[0] + self.params[1]).reshape(B, T, -1)

    def backward(self, dout):
        B, T, V = dout.shape
        W = self.params[0]
        x2 = self.x.reshape(B * T, -1)
        d2 = dout.reshape(B * T, V)
        self.grads[0][...] = x2.T @ d2
        self.grads[1][...] = d2.sum(axis=0)
        return (d2 @ W.T).reshape(B, T, -1)


class TimeSoftmaxWithLoss:
    def forward(self, logits, targets):
        B, T, V = logits.shape
        z = logits.reshape(B * T, V)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        total = p.sum(axis=1, keepdims=True)
        p /= total
        t = targets.reshape(-1)
        self.cache = (p, t, logits.shape)
        # exact -log softmax (log-sum-exp - z); no "+ 1e-7" inside the log, which would
        # understate the loss of improbable targets, hence the perplexity
        return float((np.log(total[:, 0]) - z[np.arange(B * T), t]).mean())

    def backward(self):
        p, t, shape = self.cache
        d = p.copy()
        d[np.arange(len(t)), t] -= 1
        d /= len(t)
        return d.reshape(shape)


def clip_grads(grads, max_norm):
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads))
    if total > max_norm:
        rate = max_norm / (total + 1e-6)
        for g in grads:
            g *= rate
    return total


class SGD:
    def __init__(self, lr):
        self.lr = lr

    def update(self, params, grads):
        for p, g in zip(params, grads):
            p -= self.lr * g


# ------------------------------------------------------------------ the model
class LanguageModel:
    """Embedding -> num_layers recurrent layers -> affine -> softmax cross-entropy, float32."""

    def __init__(self, mode, V, D, H, num_layers=1, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        G = {"rnn": 1, "lstm": 4, "gru": 3}[mode] * H
        nb = G + H if mode == "gru" else G  # the GRU keeps b_hn apart
        self.embed = TimeEmbedding((rng.standard_normal((V, D)) * 0.01).astype(dtype))
        self.rnns = []
        for k in range(num_layers):
            d = D if k == 0 else H
            self.rnns.append(TimeRecurrent(
                mode, (rng.standard_normal((d, G)) / np.sqrt(d)).astype(dtype),
                (rng.standard_normal((H, G)) / np.sqrt(H)).astype(dtype), np.zeros(nb, dtype=dtype)))
        self.affine = TimeAffine((rng.standard_normal((H, V)) / np.sqrt(H)).astype(dtype), np.zeros(V, dtype=dtype))
        self.loss_layer = TimeSoftmaxWithLoss()
        self.layers = [self.embed, *self.rnns, self.affine]
        self.params = [p for layer in self.layers for p in layer.params]
        self.grads = [g for layer in self.layers for g in layer.grads]

    def forward(self, ids, targets):
        x = ids
        for layer in self.layers:
            x = layer.forward(x)
        return self.loss_layer.forward(x, targets)

    def backward(self):
        d = self.loss_layer.backward()
        for layer in reversed(self.layers):
            d = layer.backward(d)

    def reset_state(self):
        for rnn in self.rnns:
            rnn.h = rnn.c = None

    def generate_step(self, token_id):
        """One token of generation at batch 1, carrying the state; returns the greedy next id."""
        x = self.embed.params[0][[token_id]]
        for rnn in self.rnns:
            step = rnn.step_class(*rnn.params)
            if rnn.h is None:
                H = rnn.params[1].shape[0]
                rnn.h, rnn.c = np.zeros((1, H), x.dtype), np.zeros((1, H), x.dtype)
            if rnn.mode == "lstm":
                rnn.h, rnn.c = step.forward(x, rnn.h, rnn.c)
            else:
                rnn.h = step.forward(x, rnn.h)
            x = rnn.h
        logits = x @ self.affine.params[0] + self.affine.params[1]
        return int(logits.argmax())
