"""Speed changes keep the numbers: two training steps on a fixed batch give the losses the previous code gave.

GOLDEN holds the loss terms of two consecutive `tood.engine.loop.train_step` calls (the second one sees the SGD
update of the first, so gradients and the optimizer are covered too) for five configurations, recorded with
the code before the speed work (commit 7eab81e: torchvision's FrozenBatchNorm2d, the T-Head's layer
attention through an NCHW copy, the for-loop SGD) by running `step_losses` of this file against it:

    git worktree add /tmp/old 7eab81e
    PYTHONPATH=/tmp/old .venv/bin/python -c "import sys; sys.path.insert(0, 'tests'); \\
        import test_step_equivalence as t; print(t.record())"

fp32 on one thread; the tolerance is fp32 rounding (other CPUs pick other conv kernels), far below what any
change of formula moves.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tood.engine.runtime
from tood.config import AssignConfig, ModelConfig, RunConfig, TrainConfig
from tood.data.dataset import Batch
from tood.engine.loop import train_step
from tood.engine.train import build_state

NUM_CLASSES = 3
# name -> (model overrides, channels_last, epoch); epoch 0 is the ATSS warm-up, epoch 1 TAL
CASES = {
    "tood_bn_cl_tal": ({"head": "tood"}, True, 1),
    "tood_frozen_cl_tal": ({"head": "tood", "norm": "frozen_bn"}, True, 1),
    "tood_bn_nchw_atss": ({"head": "tood"}, False, 0),
    "tood_based_frozen_cl_tal": ({"head": "tood", "anchor": "based", "norm": "frozen_bn"}, True, 1),
    "parallel_frozen_cl_atss": ({"head": "parallel", "norm": "frozen_bn"}, True, 0),
}
GOLDEN = {
    "tood_bn_cl_tal": [
        {"loss_cls": 1.4140931367874146, "loss_box": 0.8888131380081177, "loss": 2.3029062747955322},
        {"loss_cls": 1.9172170162200928, "loss_box": 0.7002167105674744, "loss": 2.617433786392212},
    ],
    "tood_frozen_cl_tal": [
        {"loss_cls": 1.425087809562683, "loss_box": 0.8961537480354309, "loss": 2.321241617202759},
        {"loss_cls": 1.8125660419464111, "loss_box": 0.7640438079833984, "loss": 2.5766098499298096},
    ],
    "tood_bn_nchw_atss": [
        {"loss_cls": 1.1203396320343018, "loss_box": 1.4739539623260498, "loss": 2.5942935943603516},
        {"loss_cls": 1.118956446647644, "loss_box": 1.4423855543136597, "loss": 2.5613420009613037},
    ],
    "tood_based_frozen_cl_tal": [
        {"loss_cls": 0.19950535893440247, "loss_box": 1.5046956539154053, "loss": 1.7042009830474854},
        {"loss_cls": 0.2050967961549759, "loss_box": 1.499791145324707, "loss": 1.7048879861831665},
    ],
    "parallel_frozen_cl_atss": [
        {"loss_cls": 1.1687266826629639, "loss_box": 1.5052675008773804,
         "loss_ctr": 0.6908307671546936, "loss": 3.3648247718811035},
        {"loss_cls": 1.1603319644927979, "loss_box": 1.4922890663146973,
         "loss_ctr": 0.6909298896789551, "loss": 3.34355092048645},
    ],
}  # fmt: skip


def fixed_batch() -> Batch:
    """2 images of 64x64 (N(0,1) pixels) with 2 and 3 GTs over 3 classes; the second image's 3rd row is padding."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=g)
    gt_boxes = torch.tensor(
        [[[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 50.0], [0.0, 0.0, 0.0, 0.0]],
         [[10.0, 10.0, 22.0, 26.0], [33.0, 2.0, 63.0, 31.0], [1.0, 40.0, 40.0, 63.0]]]
    )  # fmt: skip
    gt_labels = torch.tensor([[0, 2, 0], [1, 1, 2]])
    gt_mask = torch.tensor([[True, True, False], [True, True, True]])
    return Batch(images, gt_boxes, gt_labels, gt_mask)


def step_losses(model: dict, channels_last: bool, epoch: int) -> list[dict[str, float]]:
    """Loss terms of two training steps (fp32, seed 0, one thread) of a tiny detector on fixed_batch().

    With norm frozen_bn the stem and stage 1 are frozen as the pretrained recipe freezes them.
    """
    cfg = RunConfig(
        variant="equivalence",
        model=ModelConfig(**{"depth": 18, "fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4, **model}),
        assign=AssignConfig(warmup_epochs=1),
        train=TrainConfig(batch_size=2, amp="fp32", channels_last=channels_last),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        state = build_state(cfg, NUM_CLASSES, torch.device("cpu"), 1, None)
        if model.get("norm") == "frozen_bn":
            body = state.detector.backbone.body
            for module in (body.stem, body.stages[0]):
                module.requires_grad_(False)
        state.epoch = epoch
        return [train_step(state, fixed_batch(), cfg, torch.device("cpu"), 1) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)


def record() -> dict:
    """GOLDEN as the code on the path computes it (see the module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: step_losses(*case) for name, case in CASES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_two_steps_give_the_previous_codes_losses(name):
    got = step_losses(*CASES[name])
    for step, (losses, expected) in enumerate(zip(got, GOLDEN[name])):
        assert losses.keys() == expected.keys()
        for term, value in expected.items():
            assert losses[term] == pytest.approx(value, rel=2e-5, abs=1e-6), (step, term)


# ---------------------------------------------------------------------------------------------------
# the pieces, one by one


def test_frozen_bn_equals_torchvision_and_stays_bf16_under_autocast():
    from torchvision.ops.misc import FrozenBatchNorm2d as Reference

    from tood.model.backbone import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(0)
    ours, ref = FrozenBatchNorm2d(8), Reference(8)
    for name in ("weight", "bias", "running_mean"):
        buf = torch.randn(8, generator=g)
        getattr(ours, name).copy_(buf), getattr(ref, name).copy_(buf)
    var = torch.rand(8, generator=g) + 0.1
    ours.running_var.copy_(var), ref.running_var.copy_(var)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 8, 5, 5, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    grad, grad_ref = torch.autograd.grad(y.square().sum(), x), torch.autograd.grad(y_ref.square().sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.bfloat16()).dtype == torch.bfloat16


def test_fused_sgd_updates_equal_the_for_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8, 3, 3), (16,), (3, 16, 1, 1)]
    results = []
    for fused in (False, True):
        params = [
            torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(1))) for s in shapes
        ]
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=fused)
        grads = [torch.randn(s, generator=g.manual_seed(2)) for s in shapes]
        for step in range(3):
            for p, grad in zip(params, grads):
                p.grad = grad * (step + 1)
            opt.step()
        results.append([p.detach() for p in params])
    for loop, fused in zip(*results):
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# train.amp: auto


def test_auto_precision_is_bf16_only_with_native_bf16_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    for explicit in ("fp32", "bf16", "fp16"):
        assert tood.engine.runtime.resolve_amp(explicit, cpu) == explicit
    monkeypatch.setattr(tood.engine.runtime, "cpu_has_native_bf16", lambda: False)  # a Xeon, AVX-512 only
    assert tood.engine.runtime.resolve_amp("auto", cpu) == "fp32"
    monkeypatch.setattr(tood.engine.runtime, "cpu_has_native_bf16", lambda: True)  # avx512_bf16 / AMX
    assert tood.engine.runtime.resolve_amp("auto", cpu) == "bf16"


def test_a_resumed_run_keeps_its_checkpoints_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(tood.engine.runtime, "cpu_has_native_bf16", lambda: False)
    assert tood.engine.runtime.run_precision("auto", cpu, None) == "fp32"
    assert tood.engine.runtime.run_precision("auto", cpu, {"amp": "fp32"}) == "fp32"
    with pytest.warns(UserWarning, match="continuing in bf16"):
        assert tood.engine.runtime.run_precision("auto", cpu, {"amp": "bf16"}) == "bf16"
