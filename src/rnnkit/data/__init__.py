"""Data: vocabularies, text corpora, batching, and the loaders of the other tasks (pure NumPy).

- :mod:`.vocab`    ``Vocab`` (build, encode/decode, JSON)
- :mod:`.text`     ``read_text``, ``tokenize``/``detokenize``, ``bundled_text``, ``load_corpus`` -> ``Corpus``
- :mod:`.batching` ``TBPTTBatcher`` (B parallel streams), ``RingBatcher`` (streams read on across epochs),
  ``pad_batch`` (ids + mask), ``minibatches``
- :mod:`.tasks`    seq2seq pairs (DL2 addition/date), labelled texts (rt-polarity, SMS spam), ``fixed_split``
- :mod:`.series`   ``load_series_csv``, ``make_windows``, ``train_val_test_split_series``,
  ``rolling_origin_folds``, ``Scaler``
"""
from .batching import RingBatcher, TBPTTBatcher, minibatches, pad_batch
from .series import Scaler, load_series_csv, make_windows, rolling_origin_folds, train_val_test_split_series
from .tasks import (encode_labels, fixed_split, load_labelled_file, load_rt_polarity, load_seq2seq_file,
                    load_sms_spam, make_addition_problems, make_date_problems)
from .text import (Corpus, bundled_text, decode_text, detokenize, load_corpus, read_text, shared_data_dir,
                   split_contiguous, tokenize)
from .vocab import EOS, PAD, SOS, UNK, Vocab

__all__ = ["Vocab", "UNK", "PAD", "EOS", "SOS",
           "read_text", "decode_text", "tokenize", "detokenize", "bundled_text", "load_corpus", "Corpus",
           "split_contiguous", "shared_data_dir",
           "TBPTTBatcher", "RingBatcher", "pad_batch", "minibatches",
           "load_seq2seq_file", "make_addition_problems", "make_date_problems", "load_rt_polarity",
           "load_sms_spam", "load_labelled_file", "encode_labels", "fixed_split",
           "load_series_csv", "make_windows", "train_val_test_split_series", "rolling_origin_folds", "Scaler"]
