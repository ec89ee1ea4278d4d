"""rnnkit: recurrent neural networks from the equations up.

RNN, LSTM and GRU with hand-written forward and BPTT backward on NumPy (CuPy on GPU),
PyTorch's gate orders and parameter names, and the models and tools built on them.
"""
from . import backend
from .layers import (GRU, LSTM, RNN, Dropout, Embedding, GRUCell, Layer, Linear, LinearCrossEntropyResult, LSTMCell,
                     MSELoss, RNNCell, SoftmaxCrossEntropy, linear_cross_entropy)

__version__ = "0.1.0"


def gradcheck(*args, **kwargs):
    """Finite-difference gradient check; see :func:`rnnkit.analysis.gradcheck.gradcheck`."""
    from .analysis.gradcheck import gradcheck as _gradcheck

    return _gradcheck(*args, **kwargs)


__all__ = ["backend", "gradcheck", "Layer", "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU", "Embedding",
           "Linear", "Dropout", "SoftmaxCrossEntropy", "linear_cross_entropy", "LinearCrossEntropyResult", "MSELoss"]
