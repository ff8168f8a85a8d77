"""Progress with an ETA (tood/progress.py): a tqdm bar on a terminal, a line every LOG_INTERVAL_S in
a log, and the long loops use it (issue 18: `pretrain` printed nothing for 17.5 minutes)."""

from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm

from tood import progress as progress_module
from tood.progress import LogProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_log_gets_lines():
    assert isinstance(progress(range(3), desc="x", file=_Terminal()), tqdm)
    assert isinstance(progress(range(3), desc="x", file=io.StringIO()), LogProgress)


def test_log_lines_come_every_interval_with_an_eta_for_the_whole_job():
    now = [0.0]
    out = io.StringIO()
    bar = LogProgress(
        None,
        total=100,
        desc="pretrain",
        unit="step",
        initial=20,
        disable=False,
        file=out,
        clock=lambda: now[0],
    )
    for _ in range(12):  # 12 steps of 6 s: a line at 30 s and at 60 s, none in between, one at close
        now[0] += 6.0
        bar.update(1)
    bar.set_postfix(loss="1.234")
    bar.close()
    bar.close()  # a second close writes nothing
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == [
        "pretrain: 25/100 steps (25%), 6.00 s/step, elapsed 30s, ETA 7m30s",  # 75 steps left at 6 s
        "pretrain: 30/100 steps (30%), 6.00 s/step, elapsed 1m00s, ETA 7m00s",
        "pretrain: 32/100 steps (32%), 6.00 s/step, elapsed 1m12s, ETA 6m48s, loss 1.234",
    ]


def test_pretrain_reports_progress_with_an_eta_in_a_log(monkeypatch, capsys):
    from test_pretrain import MEAN, STD, TINY

    from tood.engine.pretrain import make_crops, train_classifier

    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)  # a line per step instead of per 30 s
    train, val = make_crops(TINY, "train", 90), make_crops(TINY, "val", 90)
    train_classifier(TINY, 18, train, val, mean=MEAN, std=STD, amp=None, channels_last=False)
    err = capsys.readouterr().err  # pytest's capture is not a terminal: the log form
    steps = re.findall(r"^pretrain: (\d+)/8 steps .*ETA", err, flags=re.MULTILINE)
    assert steps[:3] == ["1", "2", "3"], err
    assert re.search(r"^pretrain: render train crops: 64/64 crops", err, flags=re.MULTILINE), err


@pytest.mark.parametrize("seconds, text", [(41.4, "41s"), (839, "13m59s"), (10_920, "3h02m")])
def test_durations_read_at_a_glance(seconds, text):
    assert progress_module._duration(seconds) == text


def test_the_data_stage_reports_progress_while_it_draws_images(monkeypatch, capsys, tmp_path):
    from tood.config import ShapesConfig
    from tood.data.shapes import generate

    monkeypatch.setattr(progress_module, "LOG_INTERVAL_S", 0.0)
    generate(ShapesConfig(seed=3, num_train=3, num_val=2, image_size=64), tmp_path / "shapes")
    err = capsys.readouterr().err
    assert re.search(r"^shapes: draw train images: 1/3 images .*ETA", err, flags=re.MULTILINE), err
    assert re.search(r"^shapes: draw val images: 2/2 images", err, flags=re.MULTILINE), err
