"""Reading a PyTorch checkpoint file with one clear error when it is not one (issue 18).

PyTorch's own message for any file a weights-only load cannot read is its advice to turn safe loading off,
which is wrong advice for a text file and unsafe for a file nobody vouched for. Used for released checkpoints
(tood.model.mmdet_import) and our own (pipeline.predict).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class UnreadableCheckpoint(ValueError):
    """torch.load failed; the one-line message says why, without the path (the caller names the file).
    `needs_pickle` is True for a real PyTorch file that a weights-only load refuses (it holds other objects)."""

    def __init__(self, message: str, needs_pickle: bool = False):
        super().__init__(message)
        self.needs_pickle = needs_pickle


def read_torch_file(path: str | Path, weights_only: bool = True) -> Any:
    """torch.load on the CPU, with an UnreadableCheckpoint that tells a file that is no PyTorch file at all
    from one a weights-only load refuses (issue 18): PyTorch says "Re-running torch.load with weights_only
    set to False will likely succeed" for both, which is wrong advice for a text file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as e:
        if not _is_torch_file(Path(path)):
            raise UnreadableCheckpoint(
                "not a PyTorch checkpoint (torch.save writes a zip archive, or a pickle before PyTorch 1.6; "
                "this file is neither)"
            ) from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        if weights_only and isinstance(e, pickle.UnpicklingError):
            # PyTorch's first line is its advice to turn safe loading off; the cause is on a later one
            cause = next((line for line in lines if "WeightsUnpickler error" in line), lines[-1])
            raise UnreadableCheckpoint(
                f"holds objects other than tensors and plain containers, which a weights-only load refuses "
                f"({_first_sentence(cause)})",
                needs_pickle=True,
            ) from None
        raise UnreadableCheckpoint(
            f"a damaged or truncated PyTorch file ({_first_sentence(lines[0])})"
        ) from None


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def _is_torch_file(path: Path) -> bool:
    """torch.save's zip format starts with the zip magic; the legacy format with a pickle PROTO opcode."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
