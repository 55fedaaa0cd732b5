"""The fast path (``CounterfactualConfig.compile``) computes what the plain step computes.

torch.compile runs here with the ``aot_eager`` backend: the same graph capture as on a GPU
(dynamo, AOT autograd, functionalised in-place updates of BatchNorm and spectral-norm
buffers), but eager kernels instead of inductor's generated C++, whose build takes about 15
minutes on this machine's 2 cores; inductor's kernels are exercised by
``benchmarks/train_step.py --fast``. Capture is slow too (each new spectrally normalised
model recompiles), so one run is compiled: a small GAN (3 blocks) and a small stand-in for
the frozen classifier (the step treats f as any module x (B, 1, H, W) -> logits (B,)).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo
from torch import nn

from coinlib import counterfactual
from coinlib.config import AnomalyConfig, CounterfactualConfig, GANConfig
from coinlib.counterfactual import (
    PLAIN,
    TrainingInterrupted,
    step_losses,
    train_counterfactual,
)

CPU = torch.device("cpu")
SMALL_GAN = GANConfig(widths=(8, 16, 16), stem_width=8, disc_widths=(8, 16, 16), skips=2)
TRAIN = CounterfactualConfig(batch_size=4, steps=6, log_every=2, eval_every=100, checkpoint_every=2,
                             generator_every=2)


def stand_in_classifier() -> nn.Module:
    torch.manual_seed(0)
    f = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))
    return f.eval().requires_grad_(False)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(counterfactual, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_plain_losses_unless_compile_is_asked_for():
    assert step_losses(TRAIN, CPU) is PLAIN
    assert step_losses(dataclasses.replace(TRAIN, compile=True), CPU) is not PLAIN


def test_compiled_steps_match_plain_steps_and_resume_a_plain_run(tiny_prepared, tmp_path, aot_eager, fp32):
    # fp32: compiled and plain bf16 steps round differently; the maths is what is compared here
    common = {"prepared": tiny_prepared, "gan": SMALL_GAN, "anomaly": AnomalyConfig(),
              "classifier": stand_in_classifier(), "classifier_path": tmp_path / "clf.pt", "device": "cpu",
              "progress": False}
    plain = train_counterfactual(out_dir=tmp_path / "plain", train=TRAIN, **common)
    with pytest.raises(TrainingInterrupted):  # a plain run, killed after its third step ...
        train_counterfactual(out_dir=tmp_path / "mixed", train=TRAIN, stop_after=3, **common)
    # ... is the same run on the fast path (compile is not part of a run's identity): it
    # resumes at its step-2 checkpoint and takes steps 2-5 compiled, with and without G
    mixed = train_counterfactual(out_dir=tmp_path / "mixed", train=dataclasses.replace(TRAIN, compile=True),
                                 **common)

    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 2  # D's loss and G's losses were compiled ...
    assert not counters["graph_break"], dict(counters["graph_break"])  # ... each as one graph

    history = {tag: [r for r in counterfactual.history(tmp_path / tag) if "d_adv" in r] for tag in ("plain", "mixed")}
    assert [r["step"] for r in history["mixed"]] == [2, 4, 6]
    for a, b in zip(history["plain"], history["mixed"]):
        assert a.keys() == b.keys()
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (a["step"], name)
    a = torch.load(plain.with_name("counterfactual_last.pt"), weights_only=True)["modules"]
    b = torch.load(mixed.with_name("counterfactual_last.pt"), weights_only=True)["modules"]
    for net in ("generator", "discriminator"):  # BatchNorm and spectral-norm buffers included
        for key, value in a[net].items():
            torch.testing.assert_close(b[net][key], value, rtol=1e-4, atol=1e-5, msg=f"{net}.{key}")


def test_a_broken_build_in_the_compile_cache_is_one_line_that_says_how_to_recover(monkeypatch):
    def compile_to_a_truncated_library(function, backend):
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: OSError: /tmp/torchinductor_x/ab/cabc.so: file too short\n  ...")
        return call

    monkeypatch.setattr(counterfactual, "COMPILE_BACKEND", "inductor")
    monkeypatch.setattr(counterfactual.torch, "compile", compile_to_a_truncated_library)
    losses = step_losses(dataclasses.replace(TRAIN, compile=True), CPU)
    with pytest.raises(RuntimeError, match="Delete that folder") as info:
        losses.discriminator()
    assert "\n" not in str(info.value) and counterfactual.compile_cache_dir() in str(info.value)
    monkeypatch.setattr(counterfactual, "COMPILE_BACKEND", "aot_eager")  # another backend's errors pass as they are
    with pytest.raises(RuntimeError, match="^InductorError"):
        step_losses(dataclasses.replace(TRAIN, compile=True), CPU).discriminator()
