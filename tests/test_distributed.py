"""Data-parallel training: two CPU processes (gloo) train in lockstep on disjoint shards.

The processes are started the way ``torchrun`` would start them (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), each runs the unchanged
:func:`train_classifier` and :func:`train_counterfactual`, and spies record what each rank
trained on, what it held after each evaluation and which files it wrote.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from coinlib.config import (
    AnomalyConfig,
    ClassifierConfig,
    CounterfactualConfig,
    GANConfig,
)
from coinlib.runtime import ResumableSampler

WORLD = 2
TINY_GAN = GANConfig(widths=(8, 8, 16, 16, 32), stem_width=8, disc_widths=(8, 8, 16, 16, 32))
# 4 steps of 4 per rank: one epoch of the 32 training slices, shared by the two ranks
TRAIN = CounterfactualConfig(batch_size=4, steps=4, log_every=2, eval_every=2, checkpoint_every=2, generator_every=2)
CLASSIFIER = ClassifierConfig(max_epochs=1, steps_per_epoch=2, batch_size=4)


def test_sampler_shards_are_disjoint_and_cover_the_data():
    for size in (32, 33):
        shards = [list(ResumableSampler(size, seed=5, rank=r, num_replicas=WORLD)) for r in range(WORLD)]
        assert len(shards[0]) == len(shards[1]) == -(-size // WORLD)  # same number of steps per rank
        assert set(shards[0]) | set(shards[1]) == set(range(size))
        overlap = set(shards[0]) & set(shards[1])
        assert len(overlap) == (0 if size % WORLD == 0 else 1)  # only the wrap-around padding repeats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, prepared: str, out: str) -> None:
    """One rank: the environment torchrun sets, spies, then the two training stages."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from coinlib import classifier_training, counterfactual

    out = Path(out)
    record = {"writes": [], "items": []}

    def spy_write(module, name):
        real = getattr(module, name)

        def write(path, *args, **kwargs):
            record["writes"].append(Path(path).name)
            return real(path, *args, **kwargs)
        setattr(module, name, write)

    for module in (classifier_training, counterfactual):
        spy_write(module, "save_checkpoint")
        spy_write(module, "write_json")

    real_step, real_refresh = counterfactual.counterfactual_step, classifier_training.refresh_batchnorm

    def step(generator, discriminator, classifier, optimizers, batch, *args):
        record["items"].append(batch["index"].tolist())
        return real_step(generator, discriminator, classifier, optimizers, batch, *args)

    def refresh(model, batches, device):  # after the epoch's updates: the classifier's weights
        torch.save(dict(model.named_parameters()), out / f"classifier_rank{rank}.pt")
        return real_refresh(model, batches, device)

    counterfactual.counterfactual_step, classifier_training.refresh_batchnorm = step, refresh

    def evaluate(generator, step):  # runs on every rank: the generator each rank holds
        torch.save(dict(generator.named_parameters()), out / f"generator_rank{rank}_step{step}.pt")
        return {"val_dummy": float(rank)}

    best = classifier_training.train_classifier(prepared, CLASSIFIER, AnomalyConfig(), out / "classifier",
                                                device="cpu", progress=False)
    classifier = classifier_training.load_classifier(out / "classifier", "cpu")
    counterfactual.train_counterfactual(prepared, TINY_GAN, TRAIN, AnomalyConfig(), classifier, best, out / "gan",
                                        device="cpu", progress=False, evaluate=evaluate)
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def test_two_processes_train_in_lockstep_on_disjoint_shards(tiny_prepared, tmp_path):
    # fork: the children skip re-importing torch (seconds each on 2 cores); nothing here touched CUDA
    mp.start_processes(_worker, args=(_free_port(), str(tiny_prepared), str(tmp_path)), nprocs=WORLD,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    # rank 0 alone wrote every checkpoint and history; rank 1 wrote nothing
    assert ranks[1]["writes"] == []
    assert {"classifier.pt", "classifier_last.pt", "classifier_history.json", "counterfactual.pt",
            "counterfactual_last.pt", "counterfactual_history.json"} <= set(ranks[0]["writes"])
    assert (tmp_path / "gan" / "counterfactual.pt").is_file()

    # each step the ranks train on different slices; over the epoch they see the whole training split
    items = [np.array(r["items"]) for r in ranks]
    assert items[0].shape == items[1].shape == (TRAIN.steps, TRAIN.batch_size)
    for a, b in zip(*items):
        assert not set(a) & set(b)
    assert len(set(items[0].ravel()) | set(items[1].ravel())) == WORLD * TRAIN.steps * TRAIN.batch_size

    # ... yet their weights stay identical: gradients are averaged over the ranks
    f0, f1 = (torch.load(tmp_path / f"classifier_rank{r}.pt") for r in range(WORLD))
    assert f0.keys() == f1.keys() and all(torch.equal(f0[key], f1[key]) for key in f0)
    for step in (2, 4):
        g0, g1 = (torch.load(tmp_path / f"generator_rank{r}_step{step}.pt") for r in range(WORLD))
        assert g0.keys() == g1.keys() and any("original" in k for k in g0)  # spectral-norm weights too
        for key in g0:
            assert torch.equal(g0[key], g1[key]), (step, key)
    saved = torch.load(tmp_path / "gan" / "counterfactual.pt", weights_only=True)["modules"]["generator"]
    assert all(torch.equal(saved[key], value) for key, value in g0.items())  # rank 0 saved what it trained

    # the history holds rank 0's evaluation and losses averaged over both ranks
    history = json.loads((tmp_path / "gan" / "counterfactual_history.json").read_text())
    assert [h["val_dummy"] for h in history if "val_dummy" in h] == [0.0, 0.0]
    assert [h["step"] for h in history if "d_adv" in h] == [2, 4]
