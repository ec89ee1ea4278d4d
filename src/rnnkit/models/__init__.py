"""Models built on the layers: language model, seq2seq, classifier, captioner, forecaster.

Each model module is imported here inside its own ``try``: one model's missing or broken
module never breaks ``import rnnkit.models`` nor the other models; asking for its class
(``from rnnkit.models import Captioner``) then raises an ImportError that names the cause
(module ``__getattr__``). They are imported eagerly rather than on first access because
``Model.load(path)`` finds the class by the name stored in the file, in ``MODEL_REGISTRY``,
which a class joins when its module is imported.
"""
from __future__ import annotations

import importlib

from .base import MODEL_REGISTRY, Model

#: public name -> module (in this package) that defines it
MODELS = {
    "LanguageModel": "language_model",
    "LanguageModelConfig": "language_model",
    "Seq2Seq": "seq2seq",
    "SequenceClassifier": "classifier",
    "Forecaster": "forecaster",
    "Captioner": "captioner",
}
_FAILED: dict[str, BaseException] = {}  # module -> why it did not import

for _module in dict.fromkeys(MODELS.values()):
    try:
        _mod = importlib.import_module(f".{_module}", __name__)
    except ImportError as _exc:  # a model not written yet, or an optional dependency missing
        _FAILED[_module] = _exc
    else:
        globals().update({name: getattr(_mod, name) for name, m in MODELS.items() if m == _module
                          and hasattr(_mod, name)})


def __getattr__(name: str):
    if name in MODELS:
        module = MODELS[name]
        cause = _FAILED.get(module, f"{module}.py defines no {name}")
        raise ImportError(f"rnnkit.models.{name} is not available: rnnkit/models/{module}.py: {cause}")
    raise AttributeError(f"module 'rnnkit.models' has no attribute {name!r}")


__all__ = ["Model", "MODEL_REGISTRY", *MODELS]
