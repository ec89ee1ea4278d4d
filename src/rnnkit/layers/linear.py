"""Affine layer over the last axis: ``y = x W^T + b`` (PyTorch layout: W is (out, in))."""
from __future__ import annotations

import math

from .. import backend, kernels
from ._checks import check_flag, check_float_input, check_grad_shape, check_size
from .base import Layer
from .recurrent import init_uniform


class Linear(Layer):
    """``y = x W^T + b`` for x of shape (..., in_features) -> (..., out_features).

    A (B, T, H) input is one GEMM over all B*T rows; the weight gradient is one GEMM too.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None, rng=None, seed=None):
        super().__init__()
        in_features, out_features = check_size(in_features, "in_features"), check_size(out_features, "out_features")
        bias = check_flag(bias, "bias")
        self.in_features, self.out_features = in_features, out_features
        dtype = dtype or backend.get_default_dtype()
        rng = rng if rng is not None else backend.default_rng(seed)
        bound = 1.0 / math.sqrt(in_features)
        xp = backend.xp_for()
        self.add_param("weight", xp.asarray(init_uniform(rng, (out_features, in_features), bound, dtype)))
        if bias:
            self.add_param("bias", xp.asarray(init_uniform(rng, (out_features,), bound, dtype)))
        self._x = None

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}" + ("" if "bias" in self.params else ", bias=False")

    def forward(self, x):
        if getattr(x, "ndim", 0) < 1:
            raise ValueError(f"x has shape {getattr(x, 'shape', None)}; expected (..., {self.in_features})")
        check_float_input(x, "x", x.ndim, self.in_features, self.dtype, check_finite=False)
        self._x = x
        # one 2-D GEMM over all leading rows: a (B, T, in) @ (in, out) matmul would run as
        # B separate (T, in) GEMMs, several times slower
        y = x.reshape(-1, self.in_features) @ self.params["weight"].T
        self.add_bias(y)
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def add_bias(self, y) -> None:
        """``y (N, out) += bias`` in place (nothing without a bias)."""
        if "bias" in self.params:
            if kernels.native_for(y, self.params["bias"]):  # the same sums, on every core
                kernels.native.add_rows(y, self.params["bias"])
            else:
                y += self.params["bias"]

    def accumulate_grads(self, dy2, x2) -> None:
        """``grads += `` the weight and bias gradients of rows ``x2`` (N, in) given ``dy2`` (N, out)."""
        kernels.accumulate_matmul(self.grads["weight"], dy2.T, x2)
        if "bias" in self.params:
            # the column sums as a GEMV, which the BLAS runs on all its threads: (700, 10000)
            # on 2 cores 0.4 ms, against 2.4 ms for NumPy's one-thread dy2.sum(axis=0)
            xp = backend.get_array_module(dy2)
            self.grads["bias"] += xp.ones(dy2.shape[0], dtype=dy2.dtype) @ dy2

    def backward(self, dy):
        x = self._x
        if x is None:
            raise RuntimeError("backward called before forward")
        check_grad_shape(dy, "dy", x.shape[:-1] + (self.out_features,), " (the shape of y)")
        x2 = x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.accumulate_grads(dy2, x2)
        return (dy2 @ self.params["weight"]).reshape(x.shape)
