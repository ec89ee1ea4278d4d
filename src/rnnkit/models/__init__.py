"""Models built on the layers: language model, seq2seq, classifier, captioner, forecaster."""
from .base import MODEL_REGISTRY, Model
from .captioner import Captioner
from .classifier import SequenceClassifier
from .forecaster import Forecaster
from .language_model import LanguageModel, LanguageModelConfig
from .seq2seq import Seq2Seq

__all__ = ["Model", "MODEL_REGISTRY", "LanguageModel", "LanguageModelConfig", "Seq2Seq", "SequenceClassifier",
           "Captioner", "Forecaster"]
