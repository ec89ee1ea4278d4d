"""Weights in and out of other frameworks: PyTorch (``rnnkit.interop.torch``).

``from_torch`` / ``to_torch`` convert modules and state_dicts (they import torch on use);
``load_torch_safetensors`` / ``save_torch_safetensors`` read and write a PyTorch
state_dict stored as safetensors with NumPy alone.
"""
from .torch import (from_torch, load_torch_safetensors, save_torch_safetensors, to_torch, torch_language_model_class,
                    torch_state_dict)

__all__ = ["from_torch", "to_torch", "load_torch_safetensors", "save_torch_safetensors", "torch_state_dict",
           "torch_language_model_class"]
