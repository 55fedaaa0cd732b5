"""The GAN trainer: loss goes down, resume equals uninterrupted, every variant trains."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from coinlib.classifier import build_classifier, classifier_features, freeze
from coinlib.config import (
    AnomalyConfig,
    ClassifierConfig,
    CounterfactualConfig,
    GANConfig,
    get_profile,
)
from coinlib.counterfactual import (
    TrainingInterrupted,
    build_optimizers,
    counterfactual_step,
    generate_counterfactuals,
    make_conditions,
    train_counterfactual,
)
from coinlib.data import SliceDataset
from coinlib.gan import build_gan
from coinlib.runtime import CheckpointError
from coinlib.variants import VARIANTS, apply_variant

TINY_GAN = GANConfig(widths=(8, 8, 16, 16, 32), stem_width=8, disc_widths=(8, 8, 16, 16, 32))
TRAIN = CounterfactualConfig(batch_size=4, steps=6, log_every=2, eval_every=100, checkpoint_every=3,
                             generator_every=2)
ANOMALY = AnomalyConfig()


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return freeze(build_classifier(ClassifierConfig()))


def test_conditions_coin_and_singla():
    p = torch.tensor([0.05, 0.95])
    coin = make_conditions(p, GANConfig(conditions=1), TRAIN)
    assert coin.identity is None and coin.counterfactual.tolist() == [0, 0]
    assert torch.allclose(coin.kl_target, torch.full((2,), TRAIN.kl_eps))
    singla = make_conditions(p, GANConfig(conditions=2), TRAIN)
    assert singla.counterfactual.tolist() == [1, 0]  # ask for the opposite class
    assert singla.identity.tolist() == [0, 1] and singla.real.tolist() == [0, 1]
    assert torch.allclose(singla.kl_target, torch.tensor([0.95, 0.05]))


def test_coin_kl_target_for_slices_f_calls_normal():
    p = torch.tensor([0.05, 0.3, 0.5, 0.95])
    paper = make_conditions(p, GANConfig(conditions=1), TRAIN)  # Eq. 3: eps for every slice
    assert torch.equal(paper.kl_target, torch.full((4,), TRAIN.kl_eps))
    code = dataclasses.replace(TRAIN, kl_target_normal="f(x)")  # eps only where f(x) >= t
    eps = TRAIN.kl_eps
    torch.testing.assert_close(make_conditions(p, GANConfig(conditions=1), code).kl_target,
                               torch.tensor([0.05, 0.3, eps, eps]))
    torch.testing.assert_close(make_conditions(p, GANConfig(conditions=1), code, classifier_threshold=0.25).kl_target,
                               torch.tensor([0.05, eps, eps, eps]))
    clamped = make_conditions(torch.tensor([0.0]), GANConfig(conditions=1), code).kl_target
    assert clamped.item() == pytest.approx(eps)  # f(x) = 0 is kept as eps, not 0
    singla = make_conditions(p, GANConfig(conditions=2), code)  # Eq. 9 does not change
    torch.testing.assert_close(singla.kl_target, 1 - p)


class _ConstantClassifier(torch.nn.Module):
    """f(x) = sigmoid(logit) for every image, still a function of x for autograd."""

    def __init__(self, probability: float):
        super().__init__()
        self.logit = float(torch.logit(torch.tensor(probability)))

    def forward(self, x):
        return 0.0 * x.flatten(1).sum(1) + self.logit


@pytest.mark.parametrize("target, probability, zero", [("f(x)", 0.2, True), ("f(x)", 0.8, False),
                                                        ("eps", 0.2, False)])
def test_coin_step_reads_f_when_its_kl_target_needs_it(tiny_prepared, target, probability, zero):
    # f says p for x and for x_cf alike: with target f(x) for slices f calls normal, L_f is
    # KL(p || p) = 0; f calling x abnormal (0.8 >= t), or the paper's target, asks for eps
    torch.manual_seed(0)
    generator, discriminator = build_gan(TINY_GAN)
    train = dataclasses.replace(TRAIN, kl_target_normal=target)
    optimizers = build_optimizers(generator, discriminator, train, torch.device("cpu"))
    dataset = SliceDataset(tiny_prepared, "train", ANOMALY, fresh_anomalies=False)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    out = counterfactual_step(generator, discriminator, _ConstantClassifier(probability), optimizers, batch,
                              TINY_GAN, train, True, torch.device("cpu"), classifier_threshold=0.5)
    if zero:
        assert out["g_f"].item() == pytest.approx(0.0, abs=1e-5)
    else:  # lambda_f * KL(eps || p) ~ lambda_f * -log(1 - p)
        assert out["g_f"].item() == pytest.approx(TRAIN.lambda_f * -math.log(1 - probability), rel=1e-3)


def test_generator_loss_decreases_over_steps(tiny_prepared, classifier):
    # without the adversarial term the generator's objective is stationary, so it must fall
    torch.manual_seed(0)
    generator, discriminator = build_gan(TINY_GAN)
    train = dataclasses.replace(TRAIN, generator_every=1, lr=1e-3, lambda_adv=0.0)
    optimizers = build_optimizers(generator, discriminator, train, torch.device("cpu"))
    dataset = SliceDataset(tiny_prepared, "train", ANOMALY, fresh_anomalies=False)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(8)])
    losses = [counterfactual_step(generator, discriminator, classifier, optimizers, batch, TINY_GAN, train,
                                  True, torch.device("cpu"))["g_total"].item() for _ in range(12)]
    assert losses[-1] < losses[0] * 0.7, losses


def _weights(path):
    return torch.load(path, weights_only=True)["modules"]


@pytest.mark.parametrize("step_precision", ["fp32", "bf16"])
def test_resume_after_interruption_equals_uninterrupted(tiny_prepared, classifier, tmp_path, step_precision):
    train = dataclasses.replace(TRAIN, precision=step_precision)  # the guarantee holds on both paths
    common = dict(prepared=tiny_prepared, gan=TINY_GAN, train=train, anomaly=ANOMALY,
                  classifier=classifier, classifier_path=tmp_path / "clf.pt", device="cpu", progress=False)
    straight = train_counterfactual(out_dir=tmp_path / "straight", **common)
    with pytest.raises(TrainingInterrupted):
        train_counterfactual(out_dir=tmp_path / "resumed", stop_after=4, **common)  # dies after step 4
    resumed = train_counterfactual(out_dir=tmp_path / "resumed", **common)  # restarts at step 3
    a, b = _weights(straight)["generator"], _weights(resumed)["generator"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    last_a = _weights(tmp_path / "straight" / "counterfactual_last.pt")["discriminator"]
    last_b = _weights(tmp_path / "resumed" / "counterfactual_last.pt")["discriminator"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_finished_run_is_reused_and_config_change_is_refused(tiny_prepared, classifier, tmp_path):
    common = dict(prepared=tiny_prepared, gan=TINY_GAN, anomaly=ANOMALY, classifier=classifier,
                  classifier_path=tmp_path / "clf.pt", device="cpu", progress=False, out_dir=tmp_path / "run")
    path = train_counterfactual(train=TRAIN, **common)
    stamp = path.stat().st_mtime_ns
    assert train_counterfactual(train=TRAIN, **common).stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different config"):
        train_counterfactual(train=dataclasses.replace(TRAIN, lambda_tv=0.0), **common)


def test_dropping_the_resume_state_keeps_the_generator_and_the_finished_record(tiny_prepared, classifier, tmp_path):
    common = dict(prepared=tiny_prepared, gan=TINY_GAN, anomaly=ANOMALY, classifier=classifier,
                  classifier_path=tmp_path / "clf.pt", device="cpu", progress=False)
    kept = train_counterfactual(train=TRAIN, out_dir=tmp_path / "kept", **common)
    slim_train = dataclasses.replace(TRAIN, keep_resume_state=False)
    slim = train_counterfactual(train=slim_train, out_dir=tmp_path / "slim", **common)
    a, b = _weights(kept)["generator"], _weights(slim)["generator"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same generator either way
    record = torch.load(tmp_path / "slim" / "counterfactual_last.pt", weights_only=True)
    assert record["modules"] == {} and record["optimizers"] == {} and record["state"]["step"] == TRAIN.steps
    assert (tmp_path / "slim" / "counterfactual_last.pt").stat().st_size < (tmp_path / "kept" / "counterfactual_last.pt").stat().st_size / 4
    stamp = slim.stat().st_mtime_ns
    assert train_counterfactual(train=slim_train, out_dir=tmp_path / "slim", **common).stat().st_mtime_ns == stamp
    slim.write_bytes(slim.read_bytes()[:100])  # a truncated generator cannot be rebuilt from the record
    with pytest.raises(CheckpointError, match="keep_resume_state"):
        train_counterfactual(train=slim_train, out_dir=tmp_path / "slim", **common)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_takes_a_training_step(name, tiny_prepared, classifier):
    profile = apply_variant(get_profile("smoke"), name)
    gan = dataclasses.replace(profile.gan, widths=TINY_GAN.widths, stem_width=8, disc_widths=TINY_GAN.disc_widths)
    train = dataclasses.replace(profile.train, batch_size=4)
    torch.manual_seed(0)
    generator, discriminator = build_gan(gan)
    optimizers = build_optimizers(generator, discriminator, train, torch.device("cpu"))
    dataset = SliceDataset(tiny_prepared, "train", ANOMALY, fresh_anomalies=False)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    before = [p.detach().clone() for p in generator.parameters()]
    out = counterfactual_step(generator, discriminator, classifier, optimizers, batch, gan, train, True,
                              torch.device("cpu"))
    assert all(torch.isfinite(v).all() for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, generator.parameters()))
    assert not any(p.requires_grad for p in classifier.parameters())


def test_generated_arrays_carry_f_and_its_features_from_one_pass(tiny_prepared, classifier):
    torch.manual_seed(0)
    generator, _ = build_gan(TINY_GAN)
    dataset = SliceDataset(tiny_prepared, "test", ANOMALY, fresh_anomalies=False)
    arrays = generate_counterfactuals(generator, classifier, dataset, TINY_GAN, batch_size=3)
    x, x_cf = (torch.from_numpy(arrays[key][:, None]) for key in ("x", "x_cf"))
    # in fp32 whatever this process's precision is, so every model is scored alike
    with torch.no_grad():
        for key, reference in (("features", classifier_features(classifier, x)),
                               ("features_cf", classifier_features(classifier, x_cf)),
                               ("p_abnormal_cf", torch.sigmoid(classifier(x_cf).float()))):
            torch.testing.assert_close(torch.from_numpy(arrays[key]), reference.float())


def test_the_step_computes_in_its_own_precision_whatever_the_process_asks(tiny_prepared, classifier,
                                                                         monkeypatch):
    from coinlib import runtime

    seen = []
    real_autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: seen.append(k.get("dtype")) or real_autocast(*a, **k))
    dataset = SliceDataset(tiny_prepared, "train", ANOMALY, fresh_anomalies=False)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(4)])
    for process, step, autocast_used in (("bf16", "fp32", False), ("fp32", "bf16", True), ("bf16", "auto", True),
                                         ("fp32", "auto", False)):
        monkeypatch.setattr(runtime, "_precision_choice", process)
        seen.clear()
        torch.manual_seed(0)
        generator, discriminator = build_gan(TINY_GAN)
        train = dataclasses.replace(TRAIN, precision=step)
        counterfactual_step(generator, discriminator, classifier, build_optimizers(generator, discriminator, train,
                            torch.device("cpu")), batch, TINY_GAN, train, True, torch.device("cpu"))
        assert (torch.bfloat16 in seen) is autocast_used, (process, step)


def test_precision_is_part_of_a_runs_identity(tiny_prepared, classifier, tmp_path):
    common = dict(prepared=tiny_prepared, gan=TINY_GAN, anomaly=ANOMALY, classifier=classifier,
                  classifier_path=tmp_path / "clf.pt", device="cpu", progress=False, out_dir=tmp_path / "run")
    train_counterfactual(train=dataclasses.replace(TRAIN, steps=2), **common)
    with pytest.raises(ValueError, match="precision"):
        train_counterfactual(train=dataclasses.replace(TRAIN, steps=2, precision="bf16"), **common)
