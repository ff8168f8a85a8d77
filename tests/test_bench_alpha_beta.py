"""bench.alpha_beta: Table 4 at three seeds a cell (the committed stats.replications folder), paired by seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.alpha_beta import main, paired, warmup_gap

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "bench" / "alpha_beta" / "epyc_bf16"
CELLS = ("a05_b2", "a05_b4", "a05_b6", "a1_b8", "a15_b8")


def test_paired_by_hand():
    # differences 1, 0, 2: mean 1, sd 1, SE 1/sqrt(3), t(2) = 1.732; 95% CI 1 ± 4.303 · 0.577
    d, (lo, hi), p, df = paired([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    assert (d, df) == (1.0, 2) and p == pytest.approx(0.2254, abs=1e-4)
    assert (lo, hi) == pytest.approx((1 - 4.3027 / math.sqrt(3), 1 + 4.3027 / math.sqrt(3)), abs=1e-3)


def test_warmup_gap_reads_the_first_curve_point_per_seed():
    m = {
        "a": {"seeds": {"0": {"curve": {"AP": [0.10, 0.2]}}, "1": {"curve": {"AP": [0.12, 0.3]}}}},
        "b": {"seeds": {"0": {"curve": {"AP": [0.10, 0.4]}}, "1": {"curve": {"AP": [0.125, 0.1]}}}},
    }
    assert warmup_gap(m) == pytest.approx(0.5)  # seed 1: 12.5 - 12.0; the later points do not count


def test_committed_folder_table_matches_tables_md_and_shares_the_warmup(capsys):
    main([])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| a")}
    assert sorted(rows) == sorted(CELLS)
    summary = json.loads((REPO / "reports" / "summary.json").read_text())["ablations"]
    tood = json.loads((FOLDER / "tood.json").read_text())["seeds"]
    for cell in CELLS:
        there = summary[f"t4_{cell}"]["AP"]["replications"]
        assert [r["folder"] for r in there] == ["bench/alpha_beta/epyc_bf16"]
        cols = rows[cell].split(" | ")
        assert cols[5] == there[0]["verdict"], (cell, cols)  # the verdict tables.md gives
        seeds = json.loads((FOLDER / f"{cell}.json").read_text())["seeds"]
        d = np.mean([100 * (seeds[s]["AP"] - tood[s]["AP"]) for s in ("0", "1", "2")])
        assert cols[6].startswith(f"{d:+.1f} [") and cols[6].endswith("(2 df)"), (cell, cols[6])
    assert out.rstrip().endswith("largest AP gap between cells at one seed: 0")


def test_a_folder_not_listed_is_one_clear_error():
    with pytest.raises(SystemExit, match="'bench/nowhere' is not listed under stats.replications"):
        main(["--folder", "bench/nowhere"])
