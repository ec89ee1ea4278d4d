"""Time-series forecasting: a window of past values in, the next ``horizon`` values out.

Inputs are windows ``x`` (B, T, D) of D (scaled) features; the targets are K of those
features (K = D for a plain univariate or multivariate series, K < D when some
features are covariates such as calendar terms). Two output shapes:

- ``output="last"`` (many-to-one, direct multi-step): the state after the last step
  predicts all ``horizon`` future values at once,
  ``yhat = h_T W^T + b`` reshaped to (B, horizon, K). ``horizon=1`` is one-step forecasting.
- ``output="sequence"`` (many-to-many): every step predicts the ``horizon`` values that
  follow it, ``yhat_t = h_t W^T + b`` -> (B, T, horizon, K), and the loss averages over all
  steps (T times more training signal per window). A forecast is the last step's output.

``residual=True``: the network forecasts the change from the last observed value of each
target, ``yhat = x_T[:K] + h_T W^T + b`` (``sequence``: ``x_t[:K]`` at every step), so a zero
output layer is the naive last-value forecast (in whatever space the features are: levels,
or the differenced series when the task differences) and the network learns a correction.

Loss: mean squared error (``mse``) or mean absolute error (``mae``) over every
predicted value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import backend
from ..layers import GRU, LSTM, RNN, Dropout, Layer, Linear, MSELoss
from .base import Model

RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
OUTPUTS = ("last", "sequence")
LOSSES = ("mse", "mae")


@dataclass
class ForecasterConfig:
    """Architecture of a :class:`Forecaster` (feature counts come from the data)."""

    cell: str = field(default="lstm", metadata={"help": "recurrent cell: rnn | lstm | gru"})
    hidden_size: int = field(default=32, metadata={"help": "recurrent hidden size H"})
    num_layers: int = field(default=1, metadata={"help": "stacked recurrent layers"})
    horizon: int = field(default=1, metadata={"help": "values forecast ahead per window (1 = one-step)"})
    output: str = field(default="last", metadata={"help": "last: many-to-one direct horizon | sequence: many-to-many"})
    loss: str = field(default="mse", metadata={"help": "training loss: mse | mae"})
    dropout: float = field(default=0.0, metadata={"help": "dropout between layers and before the output layer"})
    residual: bool = field(default=False, metadata={
        "help": "forecast the change from the last observed value of each target (zero output = naive last value)"})

    def __post_init__(self):
        if self.cell not in RECURRENT:
            raise ValueError(f"cell {self.cell!r}; expected one of {sorted(RECURRENT)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output {self.output!r}; expected one of {OUTPUTS}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss {self.loss!r}; expected one of {LOSSES}")
        if self.horizon < 1:
            raise ValueError(f"horizon {self.horizon!r}; expected an integer >= 1")


class MAELoss(Layer):
    """``mean |pred - target|``; the gradient is ``sign(pred - target) / n`` (0 at a tie)."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, pred, target) -> float:
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}; expected equal shapes")
        diff = pred - target
        self._cache = (diff, diff.size)
        return float(abs(diff).sum() / diff.size)

    def backward(self, dloss: float = 1.0):
        diff, count = self._cache
        return backend.get_array_module(diff).sign(diff) * (dloss / count)


class Forecaster(Model):
    """(Stacked) RNN/LSTM/GRU over a window, then an affine map to the forecast.

    Forecaster(config, input_size, num_targets=None, data=None, dtype=None, seed=0).
    ``num_targets`` K defaults to ``input_size`` (every feature is forecast); the targets
    are then assumed to be the first K features. ``data`` is any JSON-able description of
    the preprocessing (scaler, columns, transform) kept with the weights in checkpoints.
    """

    config_class = ForecasterConfig

    def __init__(self, config: ForecasterConfig, input_size: int, num_targets: int | None = None,
                 data: dict | None = None, dtype=None, seed: int = 0, rng=None):
        super().__init__(config)
        self.input_size = int(input_size)
        self.num_targets = int(num_targets) if num_targets is not None else self.input_size
        if self.input_size < 1:
            raise ValueError(f"input_size {input_size!r}; expected an integer >= 1")
        if not 1 <= self.num_targets <= self.input_size:
            raise ValueError(f"num_targets {num_targets!r}; expected 1 <= num_targets <= input_size = {self.input_size} "
                             "(the targets are the first num_targets input features)")
        self.data = data
        rng = rng if rng is not None else backend.default_rng(seed)
        c = config
        self.rnn = RECURRENT[c.cell](self.input_size, c.hidden_size, num_layers=c.num_layers, dropout=c.dropout,
                                     dtype=dtype, rng=rng)
        self.dropout = Dropout(c.dropout, rng=rng)
        self.output = Linear(c.hidden_size, c.horizon * self.num_targets, dtype=dtype, rng=rng)
        self.criterion = MSELoss() if c.loss == "mse" else MAELoss()
        self._shape = None

    def extra_state(self) -> dict:
        return {"input_size": self.input_size, "num_targets": self.num_targets, "data": self.data}

    def forward(self, x):
        """x (B, T, input_size) -> (B, horizon, K) for output "last", (B, T, horizon, K) for "sequence"."""
        y, _ = self.rnn(x)
        B, T, H = y.shape
        h = y[:, -1] if self.config.output == "last" else y
        out = self.output(self.dropout(h))
        self._shape = (B, T, H)
        out = out.reshape(out.shape[:-1] + (self.config.horizon, self.num_targets))
        if self.config.residual:  # + the last observed value of each target (a constant: no gradient to x here)
            base = x[:, -1, :self.num_targets] if self.config.output == "last" else x[:, :, :self.num_targets]
            out = out + base[..., None, :]
        return out

    def backward(self, dpred=None):
        """Back through the last forward. dpred shaped like its output; None: the last ``loss``'s gradient."""
        if dpred is None:
            dpred = self.criterion.backward()
        B, T, H = self._shape
        dout = dpred.reshape(dpred.shape[:-2] + (-1,))
        dh = self.dropout.backward(self.output.backward(dout))
        if self.config.output == "last":
            dy = self.xp.zeros((B, T, H), dtype=dh.dtype)
            dy[:, -1] = dh
        else:
            dy = dh
        self.rnn.backward(dy)

    def loss(self, x, target) -> float:
        """Training forward; target shaped like ``forward``'s output. Returns the mean loss."""
        self.last_pred = self.forward(x)
        return self.criterion.forward(self.last_pred, target)

    def predict(self, x):
        """Forecast (B, horizon, K) from windows x (B, T, input_size), in eval mode."""
        with self.evaluating():
            out = self.forward(x)
        return out if self.config.output == "last" else out[:, -1]


__all__ = ["ForecasterConfig", "Forecaster", "MAELoss"]
