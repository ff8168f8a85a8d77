"""DDP: two gloo ranks at global batch 4 reproduce one process at batch 4 (losses, gradients, weights).

Each rank sees half of every global batch; the loss normalisers (sum t_hat, num_pos, sum centerness) are
averaged over ranks [R reduce_mean] and DDP averages the gradients, so the two runs must agree up to float
summation order. The backbone uses `norm: frozen_bn`: trainable BatchNorm would (correctly) normalise
with per-rank statistics and differ; on GPUs `sync_bn` removes that difference. Both heads, both phases
(epoch 0 is the ATSS warm-up, epoch 1 TAL; the parallel head's centerness branch is unused under TAL).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import make_tiny_coco, tiny_config  # the tiny COCO generator of the training tests

from tood.engine.train import build_state

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"


def _run(cmd: list[str], tmp: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/m.db",
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_tiny_coco(tmp_path_factory.mktemp("ddp") / "data", num_train=8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "head,lr,warmup_epochs",
    [("tood", "0", 1), ("parallel", "0", 1), ("tood", "schedule", 2)],
    ids=["thead-atss-then-tal", "parallel-atss-then-tal", "thead-atss-learning"],
)
def test_two_gloo_ranks_match_one_process(data, tmp_path, head, lr, warmup_epochs):
    """lr=0 keeps both runs at the same weights, so each step's gradients are compared exactly, in both
    phases. With learning, TAL is chaotic: weights equal to 1e-6 after a few steps can swap a near-tied
    top-k candidate, so the learning case compares weights over ATSS-phase steps only."""
    cfg = tiny_config(data, batch_size=4, epochs=2)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, head=head, norm="frozen_bn"),
        assign=dataclasses.replace(cfg.assign, warmup_epochs=warmup_epochs),
    )
    cfg.save(tmp_path / "config.json")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    args = [str(tmp_path / "config.json"), str(data)]
    _run([sys.executable, str(WORKER), *args, str(tmp_path / "one"), lr], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _run([*torchrun, str(WORKER), *args, str(tmp_path / "two"), lr], tmp_path)

    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert one["world"] == 1 and ranks[0]["world"] == 2
    assert len(one["steps"]) == len(ranks[0]["steps"]) == 4  # 8 images, global batch 4, 2 epochs
    for i, single in enumerate(one["steps"]):
        r0, r1 = ranks[0]["steps"][i], ranks[1]["steps"][i]
        # the ranks' slices (image, flip) partition the single process's global batch
        assert sorted(r0["images"] + r1["images"]) == sorted(single["images"]) and len(r0["images"]) == 2
        assert r0["losses"].keys() == single["losses"].keys()
        for term, value in single["losses"].items():
            assert r0["losses"][term] == r1["losses"][term]  # all-reduced: every rank logs the same value
            assert r0["losses"][term] == pytest.approx(value, rel=1e-5, abs=1e-7), (i, term)
        for name, grad in single["grads"].items():
            torch.testing.assert_close(r0["grads"][name], r1["grads"][name], rtol=0, atol=0)  # DDP all-reduce
            scale = grad.abs().max().clamp(min=1e-12)
            torch.testing.assert_close(
                r0["grads"][name] / scale, grad / scale, rtol=1e-4, atol=1e-5, msg=name
            )
    branch = "head.offset_branch.2.weight" if head == "tood" else "head.centerness_conv.weight"
    assert any(s["grads"][branch].abs().sum() > 0 for s in one["steps"]), f"{branch} never got a gradient"
    for name, w in one["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][name], w, rtol=1e-4, atol=1e-6, msg=name)


def test_sync_bn_on_cpu_ddp_fails_with_a_clear_error(data, monkeypatch):
    cfg = tiny_config(data)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, norm="sync_bn"))
    with pytest.raises(ValueError, match="model.norm: sync_bn needs CUDA"):
        build_state(cfg, 3, torch.device("cpu"), world=2, ckpt=None)
