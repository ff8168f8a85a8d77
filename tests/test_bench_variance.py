"""bench/variance.py and bench/targets.py (issue 27): the pooled seed std, the evaluation-noise estimate, and
the targets' check that every verdict is backed by its test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import targets, variance


def test_pooled_std_removes_each_settings_mean():
    # two settings at different means (precision moves the mean): within-setting sums of squares 2 and 8
    s, df = variance.pooled([[1.0, 2.0, 3.0], [10.0, 12.0, 14.0]])
    assert df == 4 and s == pytest.approx(math.sqrt((2 + 8) / 4))
    assert variance.pooled([[5.0]]) == (pytest.approx(math.nan, nan_ok=True), 0)
    lo, hi = variance.sd_ci(1.0, 4)
    assert lo < 1.0 < hi and hi == pytest.approx(math.sqrt(4 / 0.4844185), rel=1e-4)  # chi2(0.025, 4)


def test_eval_noise_recovers_a_known_per_image_noise(tmp_path):
    """Runs whose AP on 512 images is the mean of two 256-image halves with independent errors of std e:
    Var(AP_256 - AP_512) = e^2 / 2 = the noise of AP_512 itself; the estimator returns its std."""
    rng, e = np.random.default_rng(0), 0.004  # 0.4 AP per 256-image half
    for v in variance.MAIN_VARIANTS:
        seeds = {}
        for s in range(30):
            true = 0.3 + rng.normal(0, 0.01)  # the run's own (training) AP, shared by both halves
            h1, h2 = true + rng.normal(0, e), true + rng.normal(0, e)
            seeds[str(s)] = {
                "AP": (h1 + h2) / 2,
                "num_images": 512,
                "curve": {"step": [8], "AP": [h1], "num_images": [256]},
            }
        (tmp_path / f"{v}.json").write_text(json.dumps({"seeds": seeds}))
    _, tau, df = variance.eval_noise(tmp_path)
    assert df == 7 * 29 and tau == pytest.approx(100 * e / math.sqrt(2), rel=0.1)


def test_variance_runs_on_the_committed_runs(tmp_path):
    assert variance.main(["--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "| `thead_atss` |" in text and "Evaluation noise at 512 images" in text
    assert (tmp_path / "halfwidth.png").stat().st_size > 5000


def test_targets_flag_a_verdict_without_its_test():
    ok = {"verdict": "reproduces", "p_holm": 0.01, "ci95": [0.2, 1.0], "ci90": [0.3, 0.9]}
    summary = {"stats": {"alpha": 0.05, "margin_ap": 0.5}, "ablations": {"a": {"AP": ok}}}
    assert targets.verdicts_line(summary)[1]
    summary["ablations"]["b"] = {"AP": ok | {"p_holm": 0.2}}  # "reproduces" without a Holm p below alpha
    summary["ablations"]["c"] = {"AP": {"verdict": "equivalent", "ci90": [-0.6, 0.1]}}  # 90% CI not inside
    line, met = targets.verdicts_line(summary)
    assert not met and "b/AP" in line and "c/AP" in line and "a/AP" not in line
