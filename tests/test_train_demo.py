"""pack.trainer.train_demo, the script behind `make train-demo`, on the session's demo shards (tests/conftest.py).

The full proof — a child process killed with SIGKILL after its checkpoint, resumed in another, the
loss curves compared — is `make train-demo` (minutes on a CPU). Here, in one process and three steps:
a checkpoint restores model, optimizer, RNG and every rank's loader so that the next steps are the
uninterrupted run's bit for bit, and the checkpoint holds no pickle.
"""
from __future__ import annotations

import json
import sys

import pytest

from pack.trainer.train_demo import TrainConfig, Trainer, main, resolve_training_device

torch = pytest.importorskip("torch")


def test_a_restored_checkpoint_continues_the_uninterrupted_run_bit_for_bit(demo_run, tmp_path):
    out, _, _ = demo_run
    cfg = TrainConfig(shards=str(out / "shards"), out=str(tmp_path / "run"), steps=2, checkpoint_every=1)
    first = Trainer(cfg)
    first.train_step()
    first.save()
    first.train_step()
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir())
    assert saved == ["model.safetensors", "optimizer.safetensors", "trainer.json"]      # no pickle
    meta = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert meta["step"] == 1 and [s["position"] for s in meta["loaders"]] == [1, 1]
    second = Trainer(cfg)
    second.load()
    second.train_step()
    assert second.losses == first.losses and len(first.losses) == 2
    assert first.losses[0] != first.losses[1]
    assert [d.state_dict() for d in second.loaders] == [d.state_dict() for d in first.loaders]


def test_npu_is_imported_only_when_asked_for_and_refused_clearly_without_it():
    assert resolve_training_device("cpu") == "cpu" and "torch_npu" not in sys.modules
    try:
        import torch_npu  # noqa: F401
        pytest.skip("torch_npu is installed here")
    except ImportError:
        pass
    with pytest.raises(SystemExit, match="torch_npu"):
        resolve_training_device("npu")
    with pytest.raises(SystemExit, match="cpu, cuda or npu"):
        resolve_training_device("tpu")


def test_without_demo_shards_it_says_to_run_make_demo(tmp_path):
    with pytest.raises(SystemExit, match="make demo"):
        main(["--shards", str(tmp_path / "nothing")])


def test_the_resume_check_deletes_only_run_folders_it_wrote(tmp_path):
    from pack.trainer.train_demo import _remove_earlier_run
    ours = tmp_path / "uninterrupted"
    (ours / "checkpoint").mkdir(parents=True)
    (ours / "losses.json").write_text("[]")
    _remove_earlier_run(ours)
    assert not ours.exists()
    theirs = tmp_path / "interrupted"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="did not write"):
        _remove_earlier_run(theirs)
    assert (theirs / "notes.txt").read_text() == "mine"
