"""A run's state on disk: checkpoints (atomic, with every RNG state), the fingerprints that decide whether
one may be resumed, and the keyed work folders and publishing that runs under DVC use (see tood.engine.train).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import random
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tood.config import RunConfig, resolve_repo_path

CHECKPOINT = "last.pt"


# what `publish_run` copies; curve.csv: tood.engine.curve.CURVE_FILE (the budget curve)
RUN_FILES = (CHECKPOINT, "config.json", "mlflow_run.json", "losses.csv", "curve.csv")


# keys that do not change what is trained: a resumed or finished run ignores differences in these
NON_TRAINING_KEYS = (
    "variant",
    "seeds",
    "eval.",
    "train.log_every",
    "train.num_threads",
    "train.num_workers",
)


def rng_state() -> dict:
    """Every RNG state as tensors and plain Python lists/ints, so the checkpoint loads with weights_only."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written last.pt."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def usable_checkpoint(path: Path, cfg: RunConfig, seed: int) -> dict | None:
    """The checkpoint to resume from, or None when there is none or it was trained with other settings."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return None
    old, new = training_fingerprint(ckpt["config"]), training_fingerprint(cfg.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if ckpt.get("seed") != seed:
        changed.append("seed")
    if ckpt.get("source") != source_fingerprint():
        changed.append("tood/ source code")
    if ckpt.get("init") != init_fingerprint(cfg.model.pretrained):
        changed.append("model.pretrained checkpoint")
    if changed:
        warnings.warn(
            f"{path} was trained with different settings ({', '.join(changed[:5])}); starting afresh"
        )
        return None
    return ckpt


def source_fingerprint() -> str:
    """sha256 over the tood/ package's .py files (names and bytes): the code a checkpoint was trained with."""
    package = Path(__file__).resolve().parents[1]  # tood/
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()  # e.g. model/heads.py
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def init_fingerprint(pretrained: str) -> str:
    """What the backbone starts from: "none", "imagenet", or the sha256 of the `pretrain` checkpoint file
    (its path alone would let a re-run pretraining stage leave stale finished runs in place)."""
    if pretrained in ("none", "imagenet"):
        return pretrained
    path = resolve_repo_path(pretrained)
    if not path.is_file():
        return f"missing:{pretrained}"
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, computed once per (path, mtime, size): every epoch's checkpoint records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Settings added after runs were first keyed (issue 20: Table 2's schemes and TAP), each with the value that
# trains what every run did before it existed: at that value it is left out of the fingerprint, so an
# existing run keeps its key and its resumable checkpoint (tests/test_run_keys.py pins the keys). Any other
# value is part of the key like every other setting. Written out, not read from the dataclasses: a later
# change of a default must change the keys of the runs it changes.
KEYED_ONLY_WHEN_SET = {
    "model.tap": False,
    "assign.max_iou_pos": 0.5,
    "assign.max_iou_neg": 0.4,
    "assign.max_iou_min_pos": 0.0,
    "assign.fovea_sigma": 0.4,
    "assign.fovea_scale_ranges": [[1, 64], [32, 128], [64, 256], [128, 512], [256, 2048]],
    "assign.fcos_range_bounds": [64.0, 128.0, 256.0, 512.0],
    "loss.cls_target": "hard",
}


def training_fingerprint(config: dict) -> dict:
    """The resolved hyperparameters that define what a run trains (flattened; see NON_TRAINING_KEYS and
    KEYED_ONLY_WHEN_SET)."""
    return {
        k: v
        for k, v in _flatten(config).items()
        if not k.startswith(NON_TRAINING_KEYS)
        and not (k in KEYED_ONLY_WHEN_SET and _same(v, KEYED_ONLY_WHEN_SET[k]))
    }


def _same(value, default) -> bool:
    """Equal once tuples are lists (a resolved config holds tuples, its JSON lists; 64 == 64.0)."""
    return _as_lists(value) == _as_lists(default)


def _as_lists(value):
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def work_dir_for(root: Path, cfg: RunConfig, seed: int) -> Path:
    """<root>/<variant>-seed<k>-<key>: key = sha256 of what defines the run (training_fingerprint, seed,
    tood/ source), so a folder never holds a different run. The variant is in the key because the MLflow
    run, named after it, is part of the result."""
    key = {
        "variant": cfg.variant,
        "seed": int(seed),
        "config": training_fingerprint(cfg.to_dict()),
        "source": source_fingerprint(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"{cfg.variant}-seed{seed}-{digest}"


def publish_run(work_dir: Path, out_dir: Path) -> None:
    """Replace `out_dir` by the RUN_FILES of a finished run in `work_dir`.

    The checkpoint is hard-linked (copied across file systems): never written in place (save_checkpoint
    renames a new file over it), so neither DVC's copy nor ours can change the other. The small files
    are copied, as losses.csv is appended to in place.
    """
    staging = out_dir.with_name(out_dir.name + ".publishing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in RUN_FILES:
        if name == CHECKPOINT:
            _link_or_copy(work_dir / name, staging / name)
        else:
            shutil.copy2(work_dir / name, staging / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staging, out_dir)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


@contextlib.contextmanager
def exclusive(work_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `work_dir` (released when the process dies, however it dies)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / ".lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that trains the same run in {work_dir}", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
