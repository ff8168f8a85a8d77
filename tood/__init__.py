"""TOOD: Task-aligned One-stage Object Detection (Feng et al., ICCV 2021), reimplemented in PyTorch.

Start at `detector.py` (backbone -> FPN -> head -> assignment -> losses); `train.py` and `evaluate.py`
are what the DVC stages in `pipeline/` call.
"""
