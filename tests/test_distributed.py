"""Data-parallel training on CPU with gloo: two processes give one process's result at the same
global batch, one process writes, a dead process stops the run cleanly and resume carries on.

Each multi-process run pays for spawning interpreters that import torch (about 10-20 s on a
2-core machine), so the runs are shared through a module fixture and kept to a handful."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import leanvision as lv
from leanvision.errors import ConfigError, DatasetError, DistributedError
from leanvision.training.checkpoint import load_checkpoint
from leanvision.training.distributed import World, shard, usable_cpus

# GroupNorm instead of batch norm: each process normalises its own images exactly as one
# process would, so the only difference left is the order of float additions. fp32 and no
# augmentation for the same reason (bf16 rounding and per-process random crops would differ).
EXACT = dict(model="test_efficientnet_gn", img_size=32, epochs=3, batch_size=8,
             precision="fp32", augment="none", val_fraction=0.25, progress=False)


def die_in_second_epoch(epoch: int, model: torch.nn.Module) -> None:
    """on_epoch_end hook (runs on rank 0 only): the process vanishes after epoch 2's update,
    before that epoch's checkpoint is written."""
    if epoch == 1:
        os._exit(3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("ddp")
    data = make_image_folder(root / "data")
    one = lv.train(data, root / "one", **EXACT)
    two = lv.train(data, root / "two", nproc=2, **EXACT)
    return {"data": data, "root": root, "one": one, "two": two}


def test_two_processes_match_one_process_at_the_same_global_batch(runs):
    one, two = Path(runs["one"]["artifact"]), Path(runs["two"]["artifact"])
    assert runs["two"]["training"]["processes"] == 2
    assert runs["one"]["training"]["processes"] == 1
    # the same number of optimizer steps: the batch is global, split 4 + 4
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a["global_step"] == b["global_step"] == 3 * (27 // 8)
    for key, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][key], rtol=1e-3, atol=1e-5), key
    for x, y in zip(_epochs(one), _epochs(two), strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
        assert x["val_top1"] == y["val_top1"]
    assert _max_rel_diff(a["model"], b["model"]) < 1e-3  # relative L2, every tensor
    card = json.loads((two / "model.json").read_text())
    assert card["training"]["processes"] == 2
    assert card["metrics"]["val"]["top1"] == runs["one"]["metrics"]["val"]["top1"]


def test_one_process_writes_one_complete_run(runs):
    two = Path(runs["two"]["artifact"])
    assert sorted(p.name for p in two.iterdir()) == [
        "best.safetensors", "checkpoint.pt", "config.json", "metrics.jsonl", "model.json",
        "model.safetensors"]
    assert [e["epoch"] for e in _epochs(two)] == [1, 2, 3]  # one line per epoch, not two
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    art = lv.load(two)
    weights = load_file(str(two / "model.safetensors"))
    assert set(weights) == set(art.model.state_dict())


def test_a_dead_process_stops_the_run_and_resume_carries_on(runs):
    out = runs["root"] / "killed"
    with pytest.raises(DistributedError) as err:
        lv.train(runs["data"], out, nproc=2, on_epoch_end=die_in_second_epoch, **EXACT)
    message = str(err.value)
    assert "process 0 of 2 exited with code 3" in message
    assert f"--resume {out} --nproc 2" in message
    assert not (out / "model.json").exists()
    state = load_checkpoint(out)  # the last finished epoch's checkpoint loads
    assert state["epoch"] == 0

    lv.train(resume=out, nproc=2, progress=False)
    resumed, straight = load_checkpoint(out), load_checkpoint(runs["two"]["artifact"])
    assert resumed["epoch"] == straight["epoch"] == 2
    # the data order and each process's randomness are functions of (seed, epoch, rank)
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert [e["epoch"] for e in _epochs(out)] == [1, 2, 3]


def test_distillation_fine_tunes_through_the_same_data_parallel_loop(runs):
    teacher = runs["one"]["artifact"]
    settings = {k: v for k, v in EXACT.items() if k != "model"}
    settings["epochs"] = 2
    one = lv.distill(runs["data"], teacher, "test_efficientnet_gn", runs["root"] / "kd1",
                     **settings)
    two = lv.distill(runs["data"], teacher, "test_efficientnet_gn", runs["root"] / "kd2",
                     nproc=2, **settings)
    assert two["stage"] == "distill" and two["training"]["processes"] == 2
    # cached teacher logits are looked up by each process's own image indices
    a, b = load_checkpoint(one["artifact"]), load_checkpoint(two["artifact"])
    for key, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][key], rtol=1e-3, atol=1e-5), key


def test_prune_fine_tunes_through_the_same_data_parallel_loop(runs):
    base = runs["one"]["artifact"]
    # Two steps: the second prunes the fine-tuned network that rank 0 shares with the others.
    # round_to 1: no multiple-of-8 width of this tiny GroupNorm net reaches the target.
    settings = dict(ratio=0.3, steps=2, finetune_epochs=1, round_to=1, batch_size=8,
                    precision="fp32", augment="none", progress=False)
    one = lv.prune(base, out=runs["root"] / "pruned1", check=False, **settings)
    two = lv.prune(base, out=runs["root"] / "pruned2", nproc=2, **settings)
    assert two["stage"] == "prune" and two["training"]["processes"] == 2
    a, b = lv.load(one["artifact"]), lv.load(two["artifact"])
    assert a.card["transforms"] == b.card["transforms"]  # the same channels, exactly
    assert two["pruning"]["flops_fraction"] == one["pruning"]["flops_fraction"]
    # Two fine-tuning steps compound float-summation-order noise (all-reduce, thread counts):
    # about 1e-4 on weights of 1e-2 in CI; a wrong network on a rank is off by far more.
    for key, tensor in a.model.state_dict().items():
        assert torch.allclose(tensor, b.model.state_dict()[key], rtol=1e-2, atol=5e-4), key
    for x, y in zip(one["pruning"]["steps"], two["pruning"]["steps"], strict=True):
        assert (x["val_top1_pruned"], x["val_top1_finetuned"]) == (
            y["val_top1_pruned"], y["val_top1_finetuned"])
    # rank 0 alone ran the checks and wrote: the same files, one metrics line per epoch
    assert b.card["pruning"]["checks"]["forward"] is True
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    assert files(Path(two["artifact"])) == files(Path(one["artifact"]))
    for folder in (Path(two["artifact"]), Path(two["artifact"]) / "steps" / "step-1"):
        assert [e["epoch"] for e in _epochs(folder)] == [1]
        assert json.loads((folder / "config.json").read_text())["processes"] == 2


def test_prune_refuses_bad_flags_before_any_process_starts(runs, tmp_path):
    base, out = runs["one"]["artifact"], tmp_path / "pruned"
    with pytest.raises(ConfigError, match="--batch-size 7 does not split evenly"):
        lv.prune(base, out=out, nproc=2, batch_size=7, device="cpu")
    with pytest.raises(ConfigError, match="--ratio must be between 0 and 1"):
        lv.prune(base, out=out, nproc=2, ratio=1.5)
    with pytest.raises(ConfigError, match="at least 1"):
        lv.prune(base, out=out, nproc=0)
    assert not out.exists()


def test_an_error_in_the_workers_reaches_the_caller_as_itself(tmp_path):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data")
    (data / "red" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="skip_bad_images=True"):
        lv.train(data, tmp_path / "run", nproc=2, **EXACT)


def test_more_processes_than_cores_is_refused(tiny_folder, tmp_path):
    too_many = usable_cpus() + 1
    with pytest.raises(ConfigError, match=f"--nproc {too_many} asks for more processes than"):
        lv.train(tiny_folder, tmp_path / "run", nproc=too_many, device="cpu", **_no_nproc())
    with pytest.raises(ConfigError, match="at least 1"):
        lv.train(tiny_folder, tmp_path / "run", nproc=0, **_no_nproc())
    assert not (tmp_path / "run").exists()


def test_a_port_in_use_is_named(tiny_folder, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DistributedError, match=f"port {port} .* is in use"):
            lv.train(tiny_folder, tmp_path / "run", nproc=2, port=port, device="cpu",
                     **_no_nproc())


def test_batch_size_must_split_over_the_processes(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="--batch-size 7 does not split evenly"):
        lv.train(tiny_folder, tmp_path / "run", nproc=2, device="cpu",
                 **{**_no_nproc(), "batch_size": 7})


def test_each_process_takes_its_slice_of_every_global_batch():
    assert shard(8, 8, World()) == (8, 0, 8)
    assert shard(8, 8, World(rank=1, size=2)) == (8, 4, 8)
    # fewer images than a batch: the largest even split of what there is
    assert shard(64, 27, World(rank=0, size=2)) == (26, 0, 13)
    with pytest.raises(ConfigError, match="--batch-size 9"):
        shard(9, 9, World(rank=0, size=2))


def _no_nproc() -> dict:
    return {k: v for k, v in EXACT.items() if k != "nproc"}


def _epochs(folder) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def _max_rel_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for key, x in a.items():
        if x.is_floating_point() and x.norm() > 0:
            worst = max(worst, float((x - b[key]).norm() / x.norm()))
    return worst
