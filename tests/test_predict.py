"""pipeline.predict on real folders: it never writes among its inputs, skips an unreadable image with a
report, and a missing or broken checkpoint is a one-line error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from coco_quirks import snapshot
from PIL import Image

from pipeline import predict
from pipeline.cli import CliError
from tood.config import AssignConfig, DataConfig, ModelConfig, RunConfig
from tood.model.detector import Detector

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny randomly initialised detector saved as a training checkpoint (what predict reads)."""
    cfg = RunConfig(
        variant="tiny", data=DataConfig(img_scale=(64, 64)), assign=AssignConfig(warmup_epochs=0),
        model=ModelConfig(depth=18, fpn_channels=16, stacked_convs=2, gn_groups=4),
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    state = Detector(cfg.model, 2).state_dict()
    torch.save({"config": cfg.to_dict(), "model": state, "cat_ids": [3, 7], "class_names": ["a", "b"]}, path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "my photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("b cat.jpg", (48, 40)), ("a dog.png", (40, 56)), ("c.jpeg", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _argv(checkpoint: Path, images: Path, out: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--score-thr", "0"]


def _broken_files(folder: Path) -> None:
    (folder / "junk.jpg").write_bytes(b"not a jpeg")
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:200])  # the header opens; decoding fails


def test_unreadable_images_are_reported_and_skipped(checkpoint, images, tmp_path, capsys):
    _broken_files(images)
    out = tmp_path / "pred"
    assert predict.main(_argv(checkpoint, images, out)) == 0
    err = capsys.readouterr().err
    assert f"skipped {images / 'junk.jpg'}" in err and f"skipped {images / 'cut.jpg'}" in err
    good = ["a dog.png", "b cat.jpg", "c.jpeg"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*good, "detections.json"])
    detections = json.loads((out / "detections.json").read_text())
    assert detections and all(good[d["image_id"]] == d["file_name"] for d in detections)
    for name in good:
        with Image.open(out / name) as drawn, Image.open(images / name) as src:
            assert drawn.size == src.size and drawn.format == src.format


def test_out_may_not_be_the_input_folder_inside_it_or_a_link_to_it(checkpoint, images, tmp_path):
    before = snapshot(images)
    (tmp_path / "link").symlink_to(images, target_is_directory=True)
    (tmp_path / "link to sub").symlink_to(images / "sub", target_is_directory=True)
    for out, why in (
        (images, "is the --images folder"),
        (images / "sub", "lies inside the --images folder"),
        (images / "sub" / ".." / "sub" / "deeper", "lies inside"),
        (tmp_path / "link", "is the --images folder"),
        (tmp_path / "link to sub", "lies inside"),
    ):
        with pytest.raises(CliError, match=why):
            predict.main(_argv(checkpoint, images, out))
    assert snapshot(images) == before
    with pytest.raises(CliError, match="exists and is not a folder"):
        predict.main(_argv(checkpoint, images, images / "a dog.png"))


def test_an_output_file_linked_to_an_input_is_replaced_not_written_through(checkpoint, images, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "a dog.png").symlink_to(images / "a dog.png")
    os.link(images / "c.jpeg", out / "c.jpeg")
    before = snapshot(images)
    assert predict.main(_argv(checkpoint, images, out)) == 0
    assert snapshot(images) == before
    assert (
        not (out / "a dog.png").is_symlink()
        and (out / "c.jpeg").stat().st_ino != (images / "c.jpeg").stat().st_ino
    )


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline.predict", *args]
    return subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_missing_or_broken_checkpoint_is_one_line(images, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"definitely not a zip")
    torch.save({"model": {}}, tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:100])
    for ckpt, needle in (
        (tmp_path / "absent.pt", "no such file"),
        (tmp_path / "broken.pt", "not a PyTorch checkpoint (torch.save writes a zip archive"),
        (tmp_path / "cut.pt", "a damaged or truncated PyTorch file"),
    ):
        proc = _cli(_argv(ckpt, images, tmp_path / "pred"), tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"pipeline.predict: error: --checkpoint {ckpt}: {needle}"), lines[0]
        assert "weights_only" not in lines[0]  # issue 18: never PyTorch's advice to turn safe loading off
    assert not (tmp_path / "pred").exists()


def test_a_folder_without_readable_images_is_one_error(checkpoint, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    _broken_files(folder)
    with pytest.raises(CliError, match=r"no readable .* images \(2 unreadable\)"):
        predict.main(_argv(checkpoint, folder, tmp_path / "pred"))
