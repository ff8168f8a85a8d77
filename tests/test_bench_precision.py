"""bench/precision.py (issue 16 item 5): a contrast trained again in another precision, beside the grid's runs."""

from __future__ import annotations

import json
import math

import pytest

from bench.precision import comparison_rows, main, precisions, shift
from tood.report.results import stat


def metrics(aps: list[float], precision: str, device: str = "Some CPU") -> dict:
    return {"seeds": {str(i): {"AP": a, "precision": precision, "device": device} for i, a in enumerate(aps)}}


def test_each_precision_gets_its_contrast_se_and_verdict():
    base = {"bf16": metrics([0.33, 0.34, 0.35], "bf16"), "fp32": metrics([0.34, 0.34, 0.34], "fp32")}
    treated = {"bf16": metrics([0.30, 0.31, 0.32], "bf16"), "fp32": metrics([0.33, 0.34, 0.35], "fp32")}
    bf16, fp32 = comparison_rows(base, treated, paper_delta=1.8)
    # 31 - 34 = -3; Welch SE sqrt(1/3 + 1/3) = 0.816 on 4 df: t = 3.67, p = 0.021, against the paper's sign
    assert bf16["delta"] == pytest.approx(-3.0) and bf16["se"] == pytest.approx(math.sqrt(2 / 3))
    assert bf16["test"].p == pytest.approx(0.0213, abs=1e-4) and bf16["verdict"] == "contradicts"
    # 34 - 34 = 0: inconclusive whatever the SE
    assert fp32["delta"] == pytest.approx(0.0, abs=1e-9) and fp32["verdict"] == "inconclusive"
    moved, se = shift(stat(base["bf16"], "AP"), stat(base["fp32"], "AP"))
    assert moved == pytest.approx(0.0, abs=1e-9) and se == pytest.approx(math.sqrt(1 / 3))


def test_precisions_lists_what_the_seeds_record():
    m = metrics([0.3, 0.3], "bf16")
    m["seeds"]["1"] |= {"precision": "fp32", "device": "Other CPU"}
    assert precisions(m) == "bf16 on Some CPU; fp32 on Other CPU"


def test_compare_only_reads_both_folders_and_prints_the_shift(tmp_path, capsys):
    grid, new = tmp_path / "grid", tmp_path / "new"
    for folder, prec, base, treated in (
        (grid, "bf16", [0.33, 0.34, 0.35], [0.30, 0.31, 0.32]),
        (new, "fp32", [0.34, 0.34, 0.34], [0.33, 0.34, 0.35]),
    ):
        folder.mkdir()
        (folder / "a.json").write_text(json.dumps(metrics(base, prec)))
        (folder / "b.json").write_text(json.dumps(metrics(treated, prec)))
    main(["--compare-only", "--grid", str(grid), "--out", str(new), "a", "b"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "a                    grid AP 34.0 ± 1.0 (n 3; 33.0, 34.0, 35.0) [bf16 on Some CPU]"
    assert out[1] == "a                    new  AP 34.0 ± 0.0 (n 3; 34.0, 34.0, 34.0) [fp32 on Some CPU]"
    assert out[5] == "b                    new - grid: +3.00 ± 0.82"
    assert out[6] == "b - a (grid): -3.00 ± 0.82, 95% CI -3.0 [-5.3, -0.7], p 0.021 (paper +1.8): contradicts"
    # one side has no spread: df = 2 (Welch), t(0.975, 2) = 4.30
    assert out[7] == "b - a (new): +0.00 ± 0.58, 95% CI 0.0 [-2.5, +2.5], p 1.00 (paper +1.8): inconclusive"
    assert out[8] == "the contrast moved by +3.00 ± 1.00"
