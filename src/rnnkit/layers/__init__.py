"""Layers with hand-written forward and backward (the Layer protocol, see base.py)."""
from .attention import Attention
from .base import Layer
from .cells import GRUCell, LSTMCell, RNNCell
from .dropout import Dropout
from .embedding import Embedding
from .linear import Linear
from .losses import LinearCrossEntropyResult, MSELoss, SoftmaxCrossEntropy, linear_cross_entropy
from .pooling import SequencePooling
from .recurrent import GRU, LSTM, RNN

__all__ = ["Layer", "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU", "Embedding", "Linear",
           "Dropout", "SoftmaxCrossEntropy", "linear_cross_entropy", "LinearCrossEntropyResult", "MSELoss", "SequencePooling",
           "Attention"]
