"""tabulate: paper numbers in the right rows, our values on the 0-100 scale, deltas, verdicts, figures.

Every metric value below is INVENTED for these tests (they are written to tmp_path only and never reach
reports/): round numbers chosen so the expected deltas and verdicts can be worked out by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.tabulate import main
from tood import paper
from tood.config import load_params, resolve_run_config, variant_names
from tood.report import mean_loss_curve, read_losses, verdict

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {  # same switches as the repo's params.yaml, written out so the test does not depend on it
    "parallel_atss": {"head": "parallel", "assigner": "atss", "anchor": "free"},
    "thead_atss": {"head": "tood", "assigner": "atss", "anchor": "free"},
    "parallel_tal": {"head": "parallel", "assigner": "tal", "anchor": "free"},
    "ab_parallel_atss": {"head": "parallel", "assigner": "atss", "anchor": "based"},
    "ab_thead_atss": {"head": "tood", "assigner": "atss", "anchor": "based"},
    "ab_tood": {"head": "tood", "assigner": "tal", "anchor": "based"},
    "a05_b2": {"alpha": 0.5, "beta": 2.0},
    "a05_b4": {"alpha": 0.5, "beta": 4.0},
    "a05_b6": {"alpha": 0.5, "beta": 6.0},
    "a1_b8": {"alpha": 1.0, "beta": 8.0},
    "a15_b8": {"alpha": 1.5, "beta": 8.0},
}

# TEST-ONLY invented AP values in [0, 1] (as evaluate writes them). With std 0.005 (0.5 AP points) the
# noise of a delta is sqrt(0.5^2 + 0.5^2) = 0.71 AP, so the verdict threshold is 1.41 AP:
#   thead_atss - parallel_atss       = +3.0  (paper +1.9) -> reproduces
#   ab_thead_atss - ab_parallel_atss = -2.0  (paper +1.8) -> contradicts
#   ab_tood - ab_parallel_atss       = +0.2  (paper +3.1) -> inconclusive
FAKE_AP = {
    "tood": 0.350,
    "parallel_atss": 0.300,
    "thead_atss": 0.330,
    "parallel_tal": 0.315,
    "ab_parallel_atss": 0.290,
    "ab_thead_atss": 0.270,
    "ab_tood": 0.292,
    "a05_b2": 0.340,
    "a05_b4": 0.345,
    "a05_b6": 0.335,
    "a1_b8": 0.342,
    "a15_b8": 0.331,
}
FAKE_STD = 0.005
FAKE_ALIGN = {"pcc_top50": 0.25, "iou_top10": 0.5, "correct": 100.0, "redundant": 40.0, "error": 60.0}
FAKE_ALIGN_TOOD = {"pcc_top50": 0.1, "iou_top10": 0.1, "correct": 5.0, "redundant": -10.0, "error": -15.0}
FAKE_COUNT_STD = 2.0  # box counts


def fake_metrics(params: dict, variant: str, seeds: list[int]) -> dict:
    """A metrics file in the contract's schema, with invented values (AP keys in [0, 1])."""
    cfg = resolve_run_config(params, variant)
    ap = FAKE_AP[variant]
    mean = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "APs": -1.0, "APm": ap, "APl": ap + 0.1}
    mean |= {k: v + (FAKE_ALIGN_TOOD[k] if variant == "tood" else 0.0) for k, v in FAKE_ALIGN.items()}
    std = {k: (FAKE_COUNT_STD if k in ("correct", "redundant", "error") else FAKE_STD) for k in mean}
    std = std if len(seeds) > 1 else dict.fromkeys(mean, 0.0)
    sign = [1, -1] if len(seeds) > 1 else [0]
    per_seed = {
        str(s): {k: v + sg * std[k] for k, v in mean.items()} | {"mlflow_run_id": f"run-{variant}-{s}"}
        for s, sg in zip(seeds, sign)
    }
    setting = {"dataset": "shapes", "depth": 18, "img_scale": [128, 128], "epochs": 12}
    setting |= {"head": cfg.model.head, "assigner": cfg.assign.assigner, "anchor": cfg.model.anchor}
    setting |= {"alpha": cfg.assign.alpha, "beta": cfg.assign.beta}
    return {"variant": variant, **mean, "std": std, "seeds": per_seed, "setting": setting}


def make_inputs(
    tmp: Path, seeds: list[int], alpha: float = 1.0, beta: float = 6.0, variants=VARIANTS
) -> Path:
    params = {"alpha": alpha, "beta": beta, "seeds": seeds, "variants": variants}
    params["headline"] = {"head": "tood", "assigner": "tal", "anchor": "free"}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp / "metrics").mkdir()
    for v in variant_names(params):
        (tmp / "metrics" / f"{v}.json").write_text(json.dumps(fake_metrics(params, v, seeds)))
    for s in seeds:  # loss curves for two variants only; the others are reported as missing
        for v in ("tood", "parallel_atss"):
            d = tmp / "runs" / v / f"seed{s}"
            d.mkdir(parents=True)
            rows = [f"{i},{i // 2},0.01,{3 - i * 0.1 + s},{2 - i * 0.1},{1 + s}" for i in range(6)]
            (d / "losses.csv").write_text("step,epoch,lr,loss,loss_cls,loss_box\n" + "\n".join(rows) + "\n")
    return tmp


def run_tabulate(tmp: Path) -> str:
    main(
        [
            "--params",
            str(tmp / "params.yaml"),
            "--metrics-dir",
            str(tmp / "metrics"),
            "--runs-dir",
            str(tmp / "runs"),
        ]
        + [
            "--out",
            str(tmp / "tables.md"),
            "--summary",
            str(tmp / "summary.json"),
            "--figures",
            str(tmp / "fig"),
        ]
    )
    return (tmp / "tables.md").read_text()


def line_with(text: str, *needles: str) -> str:
    """The one line of `text` containing every needle."""
    hits = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(hits) == 1, (needles, hits)
    return hits[0]


def section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory) -> tuple[str, Path]:
    tmp = make_inputs(tmp_path_factory.mktemp("one_seed"), [0])
    return run_tabulate(tmp), tmp


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> tuple[str, Path]:
    tmp = make_inputs(tmp_path_factory.mktemp("two_seeds"), [0, 1])
    return run_tabulate(tmp), tmp


# ---------------------------------------------------------------------------------------------------
# verdict function


@pytest.mark.parametrize(
    "paper_d, ours_d, noise, n, expected",
    [
        (1.9, 3.0, 0.7, 2, "reproduces the paper's direction"),
        (1.9, -2.0, 0.7, 2, "contradicts the paper"),
        (1.9, 1.0, 0.7, 2, "inconclusive at the measured noise"),  # same sign, within 2 x noise
        (1.9, -1.0, 0.7, 2, "inconclusive at the measured noise"),  # opposite sign, within 2 x noise
        (1.9, 1.4, 0.7, 3, "inconclusive at the measured noise"),  # exactly 2 x noise is not beyond it
        (-0.3, -2.0, 0.0, 2, "reproduces the paper's direction"),
        (1.9, 0.5, 0.0, 1, "direction matches (1 seed: noise not measured)"),
        (1.9, -0.5, 0.0, 1, "direction opposite (1 seed: noise not measured)"),
        (1.9, math.nan, math.nan, 0, "not run"),
    ],
)
def test_verdict(paper_d, ours_d, noise, n, expected):
    assert verdict(paper_d, ours_d, noise, n) == expected


# ---------------------------------------------------------------------------------------------------
# paper numbers and mapping


def test_paper_rows_for_and_mapping():
    assert paper.paper_rows_for("thead_atss") == [
        "Table 1: ATSS anchor-free, T-Head",
        "Table 6: T-Head + ATSS",
    ]
    assert "Table 4: alpha=1, beta=6" in paper.paper_rows_for("tood", alpha=1.0, beta=6.0)
    off = paper.paper_rows_for("tood", alpha=0.5, beta=4.0)
    assert "Table 4: alpha=1, beta=6" not in off and "Table 3: anchor-free TOOD" in off
    assert any("ours only (alpha=0.5, beta=4)" in t for t in off)
    assert paper.TABLE6[3].metrics["pcc_top50"] == 0.452 and paper.TABLE4[3].variant == "tood"


def test_paper_numbers_match_the_shared_reference_yaml():
    ref = Path("/work/shared/reference/paper_tables.yaml")  # the team's transcription of the paper
    if not ref.is_file():
        pytest.skip("reference/paper_tables.yaml is not on this machine")
    t = yaml.safe_load(ref.read_text())["paper_tables"]
    t1 = t["table1_head_structures"]
    expected = [t1[d][h] for d in ("ATSS_anchor_free", "ATSS_anchor_based") for h in ("parallel", "t_head")]
    expected += [t["table2_sample_assignment"][k] for k in ("ATSS", "TAL")]
    expected += [
        t["table3_complete_tood"][a][m] for a in ("anchor_free", "anchor_based") for m in ("ATSS", "TOOD")
    ]
    expected += t["table4_alpha_beta"] + list(t["table6_tood_overall"].values())
    rows = [*paper.TABLE1, *paper.TABLE2, *paper.TABLE3, *paper.TABLE4, *paper.TABLE6]
    for row, exp in zip(rows, expected, strict=True):
        exp = {
            "pcc_top50" if k == "PCC_top50" else "iou_top10" if k == "IoU_top10" else k: v
            for k, v in exp.items()
        }
        for key, value in row.metrics.items():
            want = exp["params_m"][key == "params_m"] if key in ("head_params_m", "params_m") else None
            want = exp["gflops"][key == "gflops"] if key in ("head_gflops", "gflops") else want
            assert value == (exp[key] if want is None else want), (row.title, key)
        if "alpha" in row.config:
            assert (row.config["alpha"], row.config["beta"]) == (exp["alpha"], exp["beta"]), row.title


def test_repo_params_list_every_paper_variant_with_the_rows_switches():
    params = load_params(REPO / "params.yaml")
    assert {row.variant for row in paper.ALL_ROWS} <= set(variant_names(params))
    for row in paper.ALL_ROWS:
        if row.variant == "tood" and "alpha" in row.config:
            continue  # the headline's alpha/beta are the user's choice
        cfg = resolve_run_config(params, row.variant)
        got = {"head": cfg.model.head, "assigner": cfg.assign.assigner, "anchor": cfg.model.anchor}
        got |= {"alpha": cfg.assign.alpha, "beta": cfg.assign.beta}
        assert {k: got[k] for k in row.config} == row.config, row.title


# ---------------------------------------------------------------------------------------------------
# tables.md


def test_every_table_and_paper_numbers_in_their_rows(one_seed):
    text, _ = one_seed
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 6", "Which runs make each row"):
        assert f"## {title}" in text
    t6 = section(text, "Table 6")
    assert "0.452" in line_with(t6, "| T-Head + TAL |", "0.661")
    assert "| 30,734 |" in line_with(t6, "| T-Head + TAL |", "0.661")
    assert "| 39.2 |" in line_with(section(text, "Table 1"), "ATSS anchor-free, parallel head")
    assert "4.82 / 31.98" in line_with(section(text, "Table 1"), "ATSS anchor-based, T-Head")
    assert "| 40.3 |" in line_with(section(text, "Table 2"), "| TAL (parallel head) |")
    assert "| 42.4 | 34.0 |" in line_with(section(text, "Table 4"), "`a05_b2`")


def test_ours_on_paper_scale_and_deltas(one_seed):
    text, _ = one_seed
    row = line_with(section(text, "Table 1"), "ATSS anchor-free, parallel head")
    assert "| 39.2 | 30.0 | 57.4 | 50.0 | 42.2 | 25.0 | — | n/a |" in row  # APs: paper none, COCO -1 -> n/a
    delta = line_with(section(text, "Table 1"), "T-Head - parallel (ATSS, anchor-free)", "| AP |")
    assert "| +1.9 | +3.0 |" in delta
    both = line_with(section(text, "Table 6"), "both vs neither", "PCC")
    assert "| +0.044 | +0.100 |" in both  # 0.35 - 0.25 (invented) vs paper 0.452 - 0.408
    redundant = line_with(section(text, "Table 6"), "both vs neither", "#redundant")
    assert "| -10,186 | -10 |" in redundant  # paper 15,242 - 25,428; ours 30 - 40 (invented)
    assert "| +5.0 |" in line_with(section(text, "Table 3"), "TOOD - ATSS (anchor-free)", "| AP |")


def test_single_seed_wording_and_setting(one_seed):
    text, _ = one_seed
    t1 = section(text, "Table 1")
    assert "direction matches (1 seed: noise not measured)" in line_with(t1, "anchor-free)", "| AP |")
    assert "direction opposite (1 seed: noise not measured)" in line_with(t1, "anchor-based)", "| AP |")
    assert "reproduces" not in text.split("## Which runs")[0].replace(
        "*reproduces the paper's direction*", ""
    )
    assert "dataset `shapes`, ResNet-18, image scale 128x128, 12 epochs, seeds [0]" in text
    assert "**not** the paper's setting" in text
    assert "`run-parallel_atss-0`" in line_with(section(text, "Which runs make each row"), "`parallel_atss`")
    assert "--workers 1" in text and "http://127.0.0.1:5000" in text and "tood-ablations" in text


def test_two_seeds_mean_std_and_verdicts(two_seeds):
    text, tmp = two_seeds
    assert "| 39.2 | 30.0 ± 0.5 |" in line_with(section(text, "Table 1"), "ATSS anchor-free, parallel head")
    t1, t3 = section(text, "Table 1"), section(text, "Table 3")
    assert "reproduces the paper's direction" in line_with(t1, "anchor-free)", "| AP |")
    assert "| ±0.7 | contradicts the paper |" in line_with(t1, "anchor-based)", "| AP |")
    assert "inconclusive at the measured noise" in line_with(t3, "TOOD - ATSS (anchor-based)", "| AP |")
    t6 = section(text, "Table 6")
    assert "| 40 ± 2 |" in line_with(t6, "| parallel head + ATSS |", "0.408")
    # -10 redundant boxes with noise sqrt(2^2 + 2^2) = 2.8: beyond 2 x noise, same sign as the paper
    assert "| ±2.8 | reproduces the paper's direction |" in line_with(t6, "both vs neither", "#redundant")
    summary = json.loads((tmp / "summary.json").read_text())
    t1_ab = summary["ablations"]["t1_ab_thead"]["AP"]
    assert t1_ab["verdict"] == "contradicts the paper" and t1_ab["ours_delta"] == pytest.approx(-2.0)
    assert summary["variants"]["parallel_atss"]["AP"] == pytest.approx(30.0)


def test_headline_off_the_paper_cell(tmp_path):
    text = run_tabulate(make_inputs(tmp_path, [0], alpha=0.5, beta=4.0))
    t4 = section(text, "Table 4")
    assert "| not run |" in line_with(t4, "| 1 | 6 |")
    assert "| 42.5 |" in line_with(t4, "| 1 | 6 |")
    ours_only = line_with(t4, "`tood` (ours only")
    assert ours_only.startswith("| 0.5 | 4 |") and "| — | 35.0 |" in ours_only
    assert "| 42.5 | 35.0 |" in line_with(section(text, "Table 3"), "anchor-free TOOD")  # still the headline
    assert "runs at α=0.5, β=4" in section(text, "Table 3")
    assert "not run" in line_with(t4, "(alpha=0.5, beta=2) - (alpha=1, beta=6)")


def test_variants_missing_from_params_are_not_run(tmp_path):
    tiny = {"thead_atss": VARIANTS["thead_atss"]}  # e.g. a smoke profile that trains two variants only
    text = run_tabulate(make_inputs(tmp_path, [0], variants=tiny))
    assert "| 41.1 | 33.0 |" in line_with(section(text, "Table 1"), "ATSS anchor-free, T-Head")
    assert "| 39.2 | not run |" in line_with(section(text, "Table 1"), "ATSS anchor-free, parallel head")
    assert "| +1.9 | — | — | not run |" in line_with(section(text, "Table 1"), "anchor-free)", "| AP |")
    assert (tmp_path / "fig" / "alpha_beta.png").stat().st_size > 5000


# ---------------------------------------------------------------------------------------------------
# errors, figures, loss curves


def test_missing_metrics_file_is_one_clear_error(tmp_path):
    tmp = make_inputs(tmp_path, [0])
    (tmp / "metrics" / "a1_b8.json").unlink()
    with pytest.raises(SystemExit) as e:
        run_tabulate(tmp)
    msg = str(e.value)
    assert str(tmp / "metrics" / "a1_b8.json") in msg and "variant 'a1_b8'" in msg
    assert msg.count("tabulate: error") == 1 and not (tmp / "tables.md").exists()


def test_stale_metrics_are_refused(tmp_path):
    tmp = make_inputs(tmp_path, [0])
    params = yaml.safe_load((tmp / "params.yaml").read_text()) | {"alpha": 0.5}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"tood\.json \(variant 'tood'\): measured with alpha=1.0"):
        run_tabulate(tmp)


def test_figures_are_valid_pngs(one_seed):
    text, tmp = one_seed
    for name in ("alpha_beta.png", "ablations.png", "losses.png", "alignment.png"):
        data = (tmp / "fig" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert "No loss curve found" in text and "`thead_atss`" in text.split("No loss curve found")[1]


def test_mean_loss_curve_over_seeds(two_seeds):
    _, tmp = two_seeds
    curve = mean_loss_curve(tmp / "runs", "tood", ["0", "1"])
    assert list(curve["step"]) == [0, 1, 2, 3, 4, 5]
    assert curve["loss_box"] == pytest.approx([1.5] * 6)  # seeds log 1 and 2
    assert mean_loss_curve(tmp / "runs", "a1_b8", ["0"]) is None


def test_read_losses_keeps_the_last_row_of_a_repeated_step(tmp_path):
    path = tmp_path / "losses.csv"  # a run killed after step 2 and resumed from step 1
    rows = ["0,0,0.01,3,2,1", "1,0,0.01,3,2,1", "2,0,0.01,3,2,1", "1,0,0.01,9,8,7", "2,0,0.01,9,8,7"]
    path.write_text("step,epoch,lr,loss,loss_cls,loss_box\n" + "\n".join(rows) + "\n")
    (losses,) = read_losses(path)
    assert list(losses["step"]) == [0, 1, 2] and list(losses["loss_cls"]) == [2, 8, 8]


def test_per_variant_curves_file_split_by_seed_with_empty_cells(tmp_path):
    (tmp_path / "curves").mkdir()
    header = "seed,step,epoch,loss,loss_cls,loss_box,loss_ctr\n"
    rows = [  # seed 0: cls 2, 4 / box 1, 3; seed 1: cls 2, 4 / box 3, 5; loss_ctr empty at step 0
        "0,0,0,4,2,1,",
        "1,0,0,4,2,3,",
        "0,1,0,4,4,3,0.5",
        "1,1,0,4,4,5,0.5",
    ]
    (tmp_path / "curves" / "tood.csv").write_text(header + "\n".join(rows) + "\n")
    curve = mean_loss_curve(tmp_path / "runs", "tood", ["0", "1"], curves_dir=tmp_path / "curves")
    assert list(curve["step"]) == [0, 1]
    assert list(curve["loss_cls"]) == [2, 4] and list(curve["loss_box"]) == [2, 4]
