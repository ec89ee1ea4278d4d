"""Recurrent layers unrolled over time: RNN, LSTM, GRU.

Stacked (``num_layers``), bidirectional, dropout between layers, initial state in and
final state out, variable lengths (``mask`` or ``lengths``), and ``stateful`` mode for
truncated BPTT. Parameters carry PyTorch's names and layouts, so a ``torch.nn.LSTM``
state_dict loads 1:1.

Equations (row vectors, ``x_t W^T`` with PyTorch-shaped ``W``), per layer and direction:

- RNN:  ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act = tanh or relu
- LSTM: ``A = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh`` split into ``i, f, g, o``;
  ``i, f, o = sigma(.)``, ``g = tanh(.)``; ``c_t = f*c_{t-1} + i*g``; ``h_t = o*tanh(c_t)``
- GRU:  ``r = sigma(x W_ir^T + b_ir + h W_hr^T + b_hr)``, ``z`` likewise,
  ``n = tanh(x W_in^T + b_in + r*(h W_hn^T + b_hn))``, ``h_t = (1-z)*n + z*h_{t-1}``

Biases: PyTorch (and cuDNN) keep two, ``b_ih`` and ``b_hh``; the RNN and LSTM only ever use
their sum. ``bias_hh=False`` (RNN, LSTM) keeps one, ``b_ih``, as the textbooks and Keras
write it. It is the same family of functions, but not the same training: both of
PyTorch's biases receive the gradient of the sum, so under SGD the sum moves at twice the
learning rate (and counts twice in a clipped gradient norm). The GRU's ``b_hn`` sits
inside ``r*(.)`` and cannot merge, so a GRU always has both.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ._checks import (check_flag, check_float_input, check_grad_shape, check_int_input, check_probability,
                      check_size)
from .base import Layer
from .unroll import GATES, Lookup, unroll_backward, unroll_forward


_INIT_BLOCK = 1 << 18  # values drawn per call: the float64 draws never take more than 2 MiB


def _draw(shape, dtype, draw):
    """``draw(n)`` (float64 values of the generator) block by block into a ``dtype`` array.

    The generator's stream is consumed in order, so the values are exactly those of one
    ``draw(size)`` call cast to ``dtype``, without its float64 temporary (52 MiB for a
    10000 x 650 output layer, left behind in the heap after the model is built)."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    for start in range(0, flat.size, _INIT_BLOCK):
        stop = min(start + _INIT_BLOCK, flat.size)
        flat[start:stop] = draw(stop - start)
    return out


def init_uniform(rng, shape, bound, dtype):
    """U(-bound, bound), PyTorch's default for recurrent and linear weights."""
    return _draw(shape, dtype, lambda n: rng.uniform(-bound, bound, size=n))


def init_normal(rng, shape, std, dtype):
    """N(0, std^2), as ``(rng.standard_normal(shape) * std).astype(dtype)``."""
    return _draw(shape, dtype, lambda n: rng.standard_normal(n) * std)


class _Recurrent(Layer):
    mode = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 bidirectional: bool = False, dropout: float = 0.0, stateful: bool = False,
                 nonlinearity: str = "tanh", dtype=None, rng=None, seed=None, bias_hh: bool = True):
        super().__init__()
        input_size, hidden_size, num_layers = (check_size(v, n) for v, n in (
            (input_size, "input_size"), (hidden_size, "hidden_size"), (num_layers, "num_layers")))
        dropout = check_probability(dropout, "dropout")
        bias, bidirectional, stateful, bias_hh = (check_flag(v, n) for v, n in (
            (bias, "bias"), (bidirectional, "bidirectional"), (stateful, "stateful"), (bias_hh, "bias_hh")))
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        if not bias_hh and self.mode == "gru":
            raise ValueError("bias_hh=False with a GRU; its b_hn sits inside r * (h W_hn^T + b_hn) and cannot "
                             "merge into b_ih: use bias_hh=True (or bias=False)")
        if stateful and bidirectional:
            raise ValueError("stateful=True with bidirectional=True; a reverse direction cannot carry state "
                             "across chunks: use bidirectional=False for truncated BPTT")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.bidirectional, self.dropout = bias, bidirectional, dropout
        self.bias_hh = bool(bias and bias_hh)
        self.stateful, self.nonlinearity = stateful, nonlinearity
        self.num_directions = 2 if bidirectional else 1
        dtype = dtype or backend.get_default_dtype()
        self.rng = rng if rng is not None else backend.default_rng(seed)
        G, H = GATES[self.mode] * hidden_size, hidden_size
        bound = 1.0 / math.sqrt(hidden_size)
        xp = backend.xp_for()
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H * self.num_directions
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                shapes = [("weight_ih", (G, in_size)), ("weight_hh", (G, H))]
                if bias:
                    shapes += [("bias_ih", (G,)), ("bias_hh", (G,))] if self.bias_hh else [("bias_ih", (G,))]
                for name, shape in shapes:
                    self.add_param(name + sfx, xp.asarray(init_uniform(self.rng, shape, bound, dtype)))
        self._state = None
        self._cache = None
        self._embedding = None  # forward_embedded's embedding, when backward owes it dx
        self._handed_out = None  # the state_n the last forward returned (fed back in: checked already)
        self.dstate0 = None

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def _names(self, layer: int, direction: int):
        s = self._suffix(layer, direction)
        return (f"weight_ih{s}", f"weight_hh{s}", f"bias_ih{s}", f"bias_hh{s}")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        elif not self.bias_hh:
            s += ", bias_hh=False"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.stateful:
            s += ", stateful=True"
        return s

    # -- state ------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the carried state (stateful mode): the next call starts from zeros."""
        self._state = None

    def _on_to(self, dtype, device) -> None:
        self._state = None
        self._cache = None
        self._handed_out = None

    @property
    def state(self):
        """The carried final state of the last call (stateful mode), or None."""
        return self._state

    def _zero_state(self, batch: int):
        xp, shape = self.xp, (self.num_layers * self.num_directions, batch, self.hidden_size)
        return xp.zeros(shape, dtype=self.dtype)

    def _check_state(self, state, batch: int):
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        parts = state if self.mode == "lstm" else (state,)
        if self.mode == "lstm" and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise ValueError(f"LSTM state is a {type(state).__name__}; expected a tuple (h, c) of arrays {shape}")
        for label, part in zip(("h", "c"), parts):
            check_float_input(part, f"initial state {label}", 3, None, self.dtype)
            if tuple(part.shape) != shape:
                raise ValueError(
                    f"initial state {label} has shape {tuple(part.shape)}; expected {shape} "
                    f"(num_layers*num_directions, batch, hidden_size)"
                )
        return tuple(parts) if self.mode == "lstm" else parts[0]

    def _check_dstate(self, dstate, batch: int):
        """``(dh_n, dc_n)`` from backward's ``dstate`` (None, or shaped exactly like ``state_n``;
        an LSTM's is a pair ``(dh, dc)``, either of which may be None); shapes only, no scan."""
        if dstate is None:
            return None, None
        shape = (self.num_layers * self.num_directions, batch, self.hidden_size)
        what = " (num_layers*num_directions, batch, hidden_size), the shape of state_n"
        if self.mode != "lstm":
            return check_grad_shape(dstate, "dstate", shape, what), None
        if not isinstance(dstate, (tuple, list)) or len(dstate) != 2:
            kind = type(dstate).__name__ + (f" of length {len(dstate)}" if isinstance(dstate, (tuple, list)) else "")
            raise ValueError(f"LSTM dstate is a {kind}; expected a tuple (dh, dc) of arrays {shape} "
                             "(either may be None), like state_n (h, c)")
        dh, dc = dstate
        return (None if dh is None else check_grad_shape(dh, "dstate dh", shape, what),
                None if dc is None else check_grad_shape(dc, "dstate dc", shape, what))

    def _resolve_mask(self, mask, lengths, B: int, T: int):
        xp = self.xp
        if mask is not None and lengths is not None:
            raise ValueError("pass either mask or lengths, not both")
        if lengths is not None:
            lengths = xp.asarray(lengths)
            if lengths.shape != (B,) or not xp.issubdtype(lengths.dtype, xp.integer):
                raise ValueError(f"lengths has shape {tuple(lengths.shape)} dtype {lengths.dtype}; expected ({B},) integers")
            if int(lengths.min()) < 1 or int(lengths.max()) > T:
                raise ValueError(f"lengths range {int(lengths.min())}..{int(lengths.max())}; expected 1 <= length <= T={T}")
            if bool((lengths == T).all()):
                return None
            return xp.arange(T)[:, None] < lengths[None, :]  # (T, B)
        if mask is not None:
            mask = xp.asarray(mask)
            if mask.shape != (B, T):
                raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (B, T) = ({B}, {T})")
            if mask.dtype != bool:
                raise ValueError(f"mask has dtype {mask.dtype}; expected bool")
            if bool(mask.all()):
                return None
            return xp.ascontiguousarray(mask.T)
        return None

    # -- forward ----------------------------------------------------------------
    def forward(self, x, state=None, mask=None, lengths=None, time_major: bool = False):
        """Run the stacked (bi)directional recurrence over a batch of sequences.

        x: (B, T, input_size). state: initial state, ``(L*dirs, B, H)`` (LSTM: tuple
        ``(h0, c0)``); default zeros, or the carried state in stateful mode.
        mask: (B, T) bool, True at valid steps; or lengths: (B,) ints (valid prefix).
        Returns ``(y, state_n)``: y (B, T, dirs*H), zero at masked steps; state_n shaped
        like state, each sequence's state after its last valid step.

        ``time_major=True``: x is (T, B, input_size) and y (T, B, dirs*H), the layout the
        time loop keeps inside, so neither is transposed (a copy of each, in and out); y is
        then the layer's own buffer, handed out read-only. The following ``backward`` takes
        dy and returns dx in the same layout. mask and lengths stay (B, T) and (B,).
        """
        check_float_input(x, "x", 3, self.input_size, self.dtype)
        if time_major:
            T, B, _ = x.shape
            X = self.xp.ascontiguousarray(x)
        else:
            B, T, _ = x.shape
            X = self.xp.ascontiguousarray(x.transpose(1, 0, 2))  # time-major inside
        self._embedding = None
        return self._forward(X, B, T, state, mask, lengths, time_major)

    def forward_embedded(self, embedding, ids, state=None, mask=None, lengths=None, time_major: bool = False):
        """``forward(embedding(ids), ...)``, where the embedding's rows go into the first layer
        unmade when that is cheaper.

        For a small vocabulary (V <= T*B / 2 and V <= 2 * embedding_dim: a character
        model) the first layer's input projection is a lookup into the projected table,
        ``(E W_ih^T)[ids]``, and its backward one (V, T*B) GEMM instead of two over all
        T*B rows (see ``unroll.Lookup``); otherwise this is the plain composition. Either way
        the following ``backward`` accumulates the embedding's gradient (``embedding.grads``)
        itself and returns None. ids: (B, T) int (whatever ``time_major``). Returns
        ``(y, state_n)`` as ``forward``; ``time_major=True`` gives y (T, B, dirs*H), as there.
        """
        weight = embedding.params["weight"]
        if getattr(ids, "ndim", 0) != 2:
            raise ValueError(f"ids have shape {getattr(ids, 'shape', None)}; expected (B, T) token ids")
        if weight.shape[1] != self.input_size:
            raise ValueError(f"embedding_dim {weight.shape[1]}; expected the layer's input_size {self.input_size}")
        B, T = ids.shape
        V, D = weight.shape
        if not (2 * V <= T * B and V <= 2 * D) or weight.dtype != self.dtype:
            x = embedding.forward(ids.T if time_major else ids)
            y, state_n = self.forward(x, state, mask, lengths, time_major)
            self._embedding = embedding  # backward hands it dx
            return y, state_n
        check_int_input(ids, "ids", V)
        X = Lookup(weight, ids.T, embedding.grads["weight"], embedding.padding_idx)
        self._embedding = None
        return self._forward(X, B, T, state, mask, lengths, time_major)

    def _forward(self, X, B, T, state, mask, lengths, time_major=False):
        """The stack over X (T, B, input_size) time-major, or a ``Lookup`` of (T, B) ids."""
        m = self._resolve_mask(mask, lengths, B, T)
        carried = False
        if state is None and self.stateful and self._state is not None:
            state, carried = self._state, True
            if (state[0] if self.mode == "lstm" else state).shape[1] != B:
                raise ValueError(
                    f"stateful layer carries a state for batch {(state[0] if self.mode == 'lstm' else state).shape[1]}; "
                    f"got batch {B}: call reset_state() when the batch size changes"
                )
        if state is None:
            h0 = self._zero_state(B)
            c0 = self._zero_state(B) if self.mode == "lstm" else None
        elif carried or (state is self._handed_out and (state[0] if self.mode == "lstm" else state).shape[1] == B):
            # the layer's own carried state (its last output state, or set_carried_state's), whose batch
            # is checked above, or the very state_n the last call returned, fed straight back in
            # (generation, one token a call): not scanned for NaN like a caller's (on a GPU the scan
            # waits for the device, twice a chunk); a NaN in it came from this layer's own arithmetic
            # and shows in the outputs it gave with that state, and in the loss the trainer checks
            h0, c0 = state if self.mode == "lstm" else (state, None)
        else:
            checked = self._check_state(state, B)
            h0, c0 = checked if self.mode == "lstm" else (checked, None)

        xp = self.xp
        caches, drop_masks = [], []
        h_n = xp.empty_like(h0)
        c_n = xp.empty_like(c0) if c0 is not None else None
        for layer in range(self.num_layers):
            outs, layer_caches = [], []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                w_ih, w_hh, b_ih, b_hh = (self.params.get(n) for n in self._names(layer, d))
                y, h_T, c_T, cache = unroll_forward(
                    self.mode, X, w_ih, w_hh, b_ih, b_hh, h0[k], None if c0 is None else c0[k],
                    mask=m, reverse=d == 1, nonlinearity=self.nonlinearity)
                h_n[k] = h_T
                if c_n is not None:
                    c_n[k] = c_T
                outs.append(y)
                layer_caches.append(cache)
            Y = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)
            drop = None
            if self.dropout and self.training and layer < self.num_layers - 1:
                keep = 1.0 - self.dropout
                drop = (self.rng.random(Y.shape) < keep).astype(Y.dtype) / keep
                drop = xp.asarray(drop)
                Y = Y * drop
            caches.append(layer_caches)
            drop_masks.append(drop)
            X = Y
        self._cache = (caches, drop_masks, B, T, time_major)
        state_n = (h_n, c_n) if self.mode == "lstm" else h_n
        self._handed_out = state_n
        if self.stateful:
            # carried, detached: the next chunk starts here, and backward stops at this edge
            self._state = (h_n.copy(), c_n.copy()) if self.mode == "lstm" else h_n.copy()
        if time_major:  # the top layer's own output (or a view of its cached states): read-only
            y = X.view()
            if xp is np:  # CuPy arrays have no writeable flag (setting it raises or does nothing): not enforced there
                y.flags.writeable = False
        else:
            y = xp.ascontiguousarray(X.transpose(1, 0, 2))
        return y, state_n

    # -- backward ---------------------------------------------------------------
    def backward(self, dy=None, dstate=None):
        """BPTT through the whole stack.

        dy: (B, T, dirs*H) gradient of the outputs ((T, B, dirs*H) after a ``time_major``
        forward; None: only the final state is used).
        dstate: gradient of state_n, the same structure and shapes exactly (``(L*dirs, B, H)``;
        LSTM: a tuple ``(dh, dc)``, either of which may be None); None: zeros. Anything else is
        a ValueError, never a broadcast.
        Returns dx (B, T, input_size) ((T, B, input_size) after a ``time_major`` forward); the
        gradient of the initial state is left in ``self.dstate0``; parameter gradients
        accumulate into ``self.grads``. After ``forward_embedded`` it returns None: the
        embedding's gradient is accumulated instead.
        """
        if self._cache is None:
            raise RuntimeError("backward called before forward (or twice for one forward)")
        caches, drop_masks, B, T, time_major = self._cache
        xp, H, dirs = self.xp, self.hidden_size, self.num_directions
        out_shape = (T, B, dirs * H) if time_major else (B, T, dirs * H)
        dh_n, dc_n = self._check_dstate(dstate, B)
        dY = None
        if dy is not None:
            check_grad_shape(dy, "dy", out_shape, " (the shape of y)")
            if time_major:
                dY = backend.ascontiguous_aligned(dy)
            else:
                dY = backend.empty_aligned(xp, (T, B, dirs * H), dy.dtype)  # the native loop reads it
                dY[...] = dy.transpose(1, 0, 2)
        dh0 = self._zero_state(B)
        dc0 = self._zero_state(B) if self.mode == "lstm" else None
        for layer in range(self.num_layers - 1, -1, -1):
            dX = None
            for d in range(dirs):
                k = layer * dirs + d
                dy_d = None if dY is None else dY[:, :, d * H : (d + 1) * H]
                dX_d, dh, dc = unroll_backward(
                    caches[layer][d], dy_d,
                    None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k],
                    self.grads, self._names(layer, d))
                dh0[k] = dh
                if dc0 is not None:
                    dc0[k] = dc
                dX = dX_d if dX is None else dX + dX_d
            if layer > 0 and drop_masks[layer - 1] is not None:
                dX *= drop_masks[layer - 1]
            dY = dX
        self._cache = None
        self.dstate0 = (dh0, dc0) if self.mode == "lstm" else dh0
        if dY is None:  # forward_embedded's lookup: the embedding's gradient is in already
            return None
        dx = dY if time_major else xp.ascontiguousarray(dY.transpose(1, 0, 2))
        embedding, self._embedding = self._embedding, None
        if embedding is not None:  # forward_embedded's plain composition
            embedding.backward(dx)
            return None
        return dx


class RNN(_Recurrent):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu).

    The argument names of ``torch.nn.RNN`` (batch-first), plus ``stateful`` for truncated BPTT;
    everything after ``num_layers`` goes by keyword, since the positional orders differ.
    """

    mode = "rnn"


class LSTM(_Recurrent):
    """Long short-term memory, gate order ``i, f, g, o`` (PyTorch's).

    ``c_t = f*c_{t-1} + i*g``, ``h_t = o*tanh(c_t)``. State is a tuple ``(h, c)``.
    """

    mode = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, bidirectional=False,
                 dropout=0.0, stateful=False, dtype=None, rng=None, seed=None, bias_hh=True):
        super().__init__(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                         dropout=dropout, stateful=stateful, nonlinearity="tanh", dtype=dtype, rng=rng,
                         seed=seed, bias_hh=bias_hh)


class GRU(_Recurrent):
    """Gated recurrent unit, gate order ``r, z, n`` (PyTorch's variant: ``r`` gates ``h W_hn^T + b_hn``)."""

    mode = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, bidirectional=False,
                 dropout=0.0, stateful=False, dtype=None, rng=None, seed=None, bias_hh=True):
        super().__init__(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional,
                         dropout=dropout, stateful=stateful, nonlinearity="tanh", dtype=dtype, rng=rng,
                         seed=seed, bias_hh=bias_hh)
