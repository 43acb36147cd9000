"""Reading weight files safely (no pickle execution)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["WeightsUnavailableError", "load_state_dict_file"]


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be found locally nor downloaded."""


def load_state_dict_file(path):
    """Load a state dict from ``.safetensors`` or a torch checkpoint.

    Torch checkpoints are read with ``weights_only=True`` so that a file
    cannot run code; a checkpoint that wraps its weights under ``state_dict``
    or ``model`` (the usual training-script layout) is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found "
                         f"{type(state).__name__}).")
    return state
