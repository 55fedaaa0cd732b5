import numpy as np
import pytest
import torch
from torch import nn

from coinlib.runtime import (
    CheckpointError,
    ResumableSampler,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


def test_checkpoint_round_trip_writes_config_beside_weights(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "m.pt", {"net": model}, {"width": 3}, {"adam": optimizer}, {"step": 7})
    assert (tmp_path / "m.json").read_text().strip().startswith("{")
    other = nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters())
    state = load_checkpoint(path, {"net": other}, {"adam": other_opt})
    assert state["step"] == 7 and state["config"] == {"width": 3}
    assert torch.equal(other.weight, model.weight)
    assert other_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        load_checkpoint(tmp_path / "nowhere.pt", {"net": nn.Linear(1, 1)})


def test_wrong_shape_names_the_file_and_module(tmp_path):
    save_checkpoint(tmp_path / "m.pt", {"net": nn.Linear(3, 2)}, {})
    with pytest.raises(CheckpointError, match=r"m\.pt \[net\].*size mismatch"):
        load_checkpoint(tmp_path / "m.pt", {"net": nn.Linear(4, 2)})
    with pytest.raises(CheckpointError, match="no weights for 'gen'"):
        load_checkpoint(tmp_path / "m.pt", {"gen": nn.Linear(3, 2)})


def test_truncated_checkpoint_is_reported(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", {"net": nn.Linear(30, 20)}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path, {"net": nn.Linear(30, 20)})


def test_load_weights_from_plain_state_dict(tmp_path):
    model = nn.Linear(2, 2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    other = nn.Linear(2, 2)
    load_weights(tmp_path / "w.pt", other)
    assert torch.equal(other.bias, model.bias)


def test_sampler_resumes_mid_epoch_and_varies_by_epoch():
    sampler = ResumableSampler(10, seed=3)
    sampler.set_position(2)
    full = list(sampler)
    sampler.set_position(2, start=4)
    assert list(sampler) == full[4:]
    sampler.set_position(3)
    assert list(sampler) != full and sorted(list(sampler)) == list(range(10))


def test_sampler_shards_cover_everything_once_per_rank():
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, seed=0, rank=rank, num_replicas=3)
        shards.append(list(sampler))
    assert all(len(s) == 4 for s in shards)
    assert set(np.concatenate(shards)) == set(range(10))


def test_weighted_sampler_balances_classes_and_resumes():
    from coinlib.runtime import class_balanced_weights

    labels = np.array([1] * 10 + [0] * 90)
    sampler = ResumableSampler(100, seed=3, weights=class_balanced_weights(labels))
    sampler.set_position(0)
    epoch = list(sampler)
    assert len(epoch) == 100 and 35 <= labels[epoch].sum() <= 65  # about half abnormal, not 10 %
    sampler.set_position(0, 40)
    assert list(sampler) == epoch[40:]
    sampler.set_position(1)
    assert list(sampler) != epoch
    with pytest.raises(ValueError, match="weights"):
        ResumableSampler(3, seed=0, weights=np.array([1.0, -1.0, 1.0]))


def test_precision_follows_the_cpu_and_can_be_forced(monkeypatch):
    from coinlib import runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(runtime, "_precision_choice", "auto")
    assert runtime.precision(cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.precision(cpu) == "bf16"
    with runtime.autocast(cpu):
        assert torch.is_autocast_enabled("cpu")
    assert runtime.precision(cpu, "fp32") == "fp32"  # a stage's own choice wins over the process's
    with runtime.autocast(cpu, choice="fp32"):
        assert not torch.is_autocast_enabled("cpu")
    runtime.set_precision("fp32")
    try:
        assert runtime.precision(cpu) == "fp32"
        assert runtime.precision(cpu, "bf16") == "bf16"
        with pytest.raises(ValueError, match="precision"):
            runtime.precision(cpu, "fp16")
        with pytest.raises(ValueError, match="precision"):
            runtime.set_precision("fp16")
    finally:
        runtime.set_precision("auto")


def test_job_threads_come_from_the_environment(monkeypatch):
    from coinlib import runtime

    monkeypatch.setenv("COIN_THREADS", "1")
    assert runtime.job_threads() == 1
    monkeypatch.setenv("COIN_THREADS", "lots")
    with pytest.raises(ValueError, match="COIN_THREADS must be a whole number"):
        runtime.job_threads()
