"""pack.trainer.loader: the same pack sequence for any num_workers, exact resumption in a fresh process (also
with another num_workers), per-source consumed counters, strict reading, collate_packs tensors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from curate.base import StageContext
from pack.profile import ModelProfile
from pack.trainer.loader import PackedShards, ResumableLoader, collate_packs
from pack.shards.stage import ShardsStage
from tests.shards_corpus import packed_table

L = 1024
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("loader")
    table = packed_table(tmp / "data", n=200, context_length=L, seed=5)
    ctx = StageContext(seed=1, out_dir=str(tmp), profile=ModelProfile(context_length=L))
    ShardsStage(context=ctx, dp_size=2, micro_batches=2, packs_per_shard=5).run(table)
    return str(tmp / "shards")


def keys_of(batches) -> list[str]:
    out = []
    for b in batches:
        out += b["pack_keys"] if "pack_keys" in b else [b["pack_key"]]
    return out


def test_order_is_the_same_for_any_num_workers(shards):
    plain = [p["pack_key"] for p in PackedShards(shards, rank=1, world_size=2)]
    assert len(plain) > 10 and plain == sorted(plain)  # file order = (step, micro_batch) order
    for workers in (0, 1, 2):
        for bs in (1, 3):
            ds = PackedShards(shards, rank=1, world_size=2, batch_size=bs)
            dl = DataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=collate_packs)
            assert keys_of(dl) == plain, (workers, bs)


def test_resume_in_the_same_process_counts_sources(shards):
    ds = PackedShards(shards, rank=0, world_size=2)
    everything = list(PackedShards(shards, rank=0, world_size=2))
    loader = ResumableLoader(ds, batch_size=2, num_workers=2)
    seen = []
    for i, batch in enumerate(loader):
        seen += batch["pack_keys"]
        if i == 2:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # JSON round trip
    assert state["position"] == 6 and state["epoch"] == 0 and state["packs_consumed"] == 6
    expected = Counter(s["source"] for p in everything[:6] for s in p["samples"])
    assert state["consumed_samples"] == dict(expected)
    assert state["consumed_tokens"] == dict(Counter({src: sum(s["length"] for p in everything[:6] for s in p["samples"]
                                                              if s["source"] == src) for src in expected}))
    again = ResumableLoader(PackedShards(shards, rank=0, world_size=2), batch_size=1, num_workers=0)
    again.load_state_dict(state)
    rest = keys_of(again)
    assert seen + rest == [p["pack_key"] for p in everything]
    final = again.state_dict()
    assert final["epoch"] == 1 and final["position"] == 0
    total = Counter(s["source"] for p in everything for s in p["samples"])
    assert final["consumed_samples"] == dict(total)


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    from pack.trainer.loader import PackedShards, ResumableLoader
    path, state_file, workers, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ds = PackedShards(path, rank=1, world_size=2, shuffle=True, seed=3)
    loader = ResumableLoader(ds, batch_size=batch, num_workers=workers, device=None)
    loader.load_state_dict(json.load(open(state_file)))
    keys = [k for b in loader for k in b["pack_keys"]]
    print(json.dumps({"keys": keys, "state": loader.state_dict()}))
""")


def test_resume_in_a_fresh_process_with_other_num_workers(shards, tmp_path):
    full = [p["pack_key"] for p in PackedShards(shards, rank=1, world_size=2, shuffle=True, seed=3)]
    ds = PackedShards(shards, rank=1, world_size=2, shuffle=True, seed=3)
    loader = ResumableLoader(ds, batch_size=2, num_workers=2, device=None)
    first = []
    for i, batch in enumerate(loader):
        first += batch["pack_keys"]
        if i == 3:
            break
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(loader.state_dict()))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, shards, str(state_file), "1", "1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first + out["keys"] == full                       # nothing repeated, nothing skipped
    assert len(set(first) & set(out["keys"])) == 0
    assert out["state"]["epoch"] == 1 and out["state"]["packs_consumed"] == len(full)


def test_shuffle_permutes_whole_steps_identically_on_every_rank(shards):
    mb = 2
    orders = []
    for rank in range(2):
        ds = PackedShards(shards, rank=rank, world_size=2, shuffle=True, seed=9)
        packs = list(ds)
        steps = [p["step"] for p in packs]
        assert all(steps[i] == steps[i + 1] for i in range(0, len(steps), mb))  # micro-batches of a step together
        assert sorted(steps) == sorted(p["step"] for p in PackedShards(shards, rank=rank, world_size=2))
        orders.append(steps)
    assert orders[0] == orders[1]
    assert orders[0] != sorted(orders[0])
    epoch1 = PackedShards(shards, rank=0, world_size=2, shuffle=True, seed=9).order(1)
    assert not np.array_equal(epoch1, PackedShards(shards, rank=0, world_size=2, shuffle=True, seed=9).order(0))


def test_tracker_refuses_out_of_order_batches(shards):
    ds = PackedShards(shards, rank=0, world_size=2)
    packs = list(PackedShards(shards, rank=0, world_size=2))
    ds.mark_consumed(packs[0])
    with pytest.raises(RuntimeError, match="expected pack 1"):
        ds.mark_consumed(packs[2])


def test_state_from_other_shards_or_rank_is_refused(shards):
    state = PackedShards(shards, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="rank differs"):
        PackedShards(shards, rank=1, world_size=2).load_state_dict(state)
    bad = dict(state, shards="0" * 64)
    with pytest.raises(ValueError, match="shards differ"):
        PackedShards(shards, rank=0, world_size=2).load_state_dict(bad)
    with pytest.raises(ValueError, match="dp_size=2"):
        PackedShards(shards, rank=0, world_size=4)


def test_collate_packs_builds_varlen_tensors(shards):
    packs = list(PackedShards(shards, rank=0, world_size=2))[:3]
    batch = collate_packs(packs)
    assert batch["position_ids"].shape == (3, L) and batch["position_ids"].dtype == torch.int64
    cu = batch["cu_seqlens"]
    assert cu.dtype == torch.int32 and int(cu[0]) == 0 and int(cu[-1]) == 3 * L
    n_segments = sum(len(p["cu_seqlens"]) - 1 for p in packs)
    assert cu.numel() == n_segments + 1
    assert batch["segment_pack"].tolist() == sorted(batch["segment_pack"].tolist())
    # positions restart at every boundary of the flattened batch
    flat = batch["position_ids"].reshape(-1)
    assert torch.nonzero(flat == 0).reshape(-1).tolist() == cu[:-1].tolist()
    assert batch["max_seqlen"] == int(torch.diff(cu).max())
    assert batch["image_token_counts"].tolist() == [im["tokens"] for p in packs for im in p["images"]]
    assert batch["images_per_pack"].tolist() == [len(p["images"]) for p in packs]
    assert batch["attention_mask"].sum(dim=1).tolist() == [p["length"] for p in packs]
    assert "input_ids" not in batch  # these shards are not tokenized
    assert batch["pack_index"].tolist() == [0, 1, 2]


def test_collate_rejects_mixed_batches(shards):
    packs = list(PackedShards(shards, rank=0, world_size=2))[:2]
    with pytest.raises(ValueError, match="spans epochs"):
        collate_packs([packs[0], dict(packs[1], epoch=1)])
    with pytest.raises(ValueError, match="at least one"):
        collate_packs([])


def test_resumable_loader_refuses_persistent_workers(shards):
    with pytest.raises(ValueError, match="persistent_workers"):
        ResumableLoader(PackedShards(shards, rank=0, world_size=2), num_workers=1, persistent_workers=True)


def test_damaged_pack_json_is_an_error_naming_the_shard(shards, tmp_path):
    import shutil
    from pack import packformat as F
    from pack.shards import tario
    copy = tmp_path / "s"
    shutil.copytree(shards, copy)
    shard = copy / "rank-00000" / "shard-000000.tar"
    ref = next(r for r in tario.index_tar(str(shard)) if r.name.endswith(".json"))
    data = bytearray(shard.read_bytes())
    data[ref.offset:ref.offset + 1] = b"["   # '{' -> '[': still bytes, no longer a pack object
    shard.write_bytes(bytes(data))
    with pytest.raises(F.PackFormatError, match=r"shard-000000.tar:r00000-s000000-m000: not valid JSON"):
        list(PackedShards(str(copy), rank=0, world_size=2, verify=False))


def _flip_image_byte(shards: str, tmp_path) -> Path:
    import shutil
    from pack.shards import tario
    copy = tmp_path / "flipped"
    shutil.copytree(shards, copy)
    shard = copy / "rank-00000" / "shard-000000.tar"
    ref = next(r for r in tario.index_tar(str(shard)) if ".img" in r.name)
    data = bytearray(shard.read_bytes())
    data[ref.offset + ref.size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return copy


def test_a_flipped_image_byte_is_caught_by_the_shard_checksum_on_open(shards, tmp_path):
    from pack import packformat as F
    copy = _flip_image_byte(shards, tmp_path)
    with pytest.raises(F.PackFormatError, match="sha256 .* differs from the manifest"):
        next(iter(PackedShards(str(copy), rank=0, world_size=2)))
    assert len(list(PackedShards(str(copy), rank=0, world_size=2, verify=False))) > 0   # opt-out reads it


def test_direct_iteration_must_be_marked_before_state_dict(shards):
    ds = PackedShards(shards, rank=0, world_size=2)
    it = iter(ds)
    first, second = next(it), next(it)
    with pytest.raises(RuntimeError, match="2 pack\\(s\\) were iterated .* not marked consumed"):
        ds.state_dict()
    ds.mark_consumed(first)
    with pytest.raises(RuntimeError, match="1 pack"):
        ds.state_dict()
    ds.mark_consumed(second)
    assert ds.state_dict()["position"] == 2


def _saved_state(shards: str) -> dict:
    """A real state: one epoch and 3 packs into the next."""
    ds = PackedShards(shards, rank=0, world_size=2)
    for pack in ds:
        ds.mark_consumed(pack)
    for _, pack in zip(range(3), ds):     # epoch 1 now
        ds.mark_consumed(pack)
    return json.loads(json.dumps(ds.state_dict()))


@pytest.mark.parametrize("field, value, message", [
    ("epoch", -3, "epoch must be >= 0"),
    ("epoch", "1", "epoch must be an integer"),
    ("epoch", 1.5, "epoch must be an integer"),
    ("position", -1, "position must be >= 0"),
    ("position", 10**6, "outside this rank's"),
    ("position", True, "position must be an integer"),
    ("packs_consumed", 2, "packs_consumed=2 but epoch 1 and position 3"),
    ("shuffle", "no", "shuffle must be true or false"),
    ("seed", None, "seed must be an integer"),
    ("consumed_samples", [], "consumed_samples must be a mapping"),
    ("consumed_tokens", {"laion": -5}, "must be >= 0"),
    ("consumed_tokens", {"laion": "many"}, "must be an integer"),
    ("version", 2, "version 2, expected 1"),
])
def test_a_damaged_saved_state_is_refused_naming_the_field(shards, field, value, message):
    from pack.trainer.loader_state import LoaderStateError
    state = _saved_state(shards)
    ds = PackedShards(shards, rank=0, world_size=2)
    with pytest.raises(LoaderStateError, match=message):
        ds.load_state_dict(dict(state, **{field: value}))
    assert (ds.epoch, ds.position, ds.packs_consumed) == (0, 0, 0), "a refused state changed nothing"


def test_a_state_with_missing_or_unknown_fields_is_refused(shards):
    from pack.trainer.loader_state import LoaderStateError
    state = _saved_state(shards)
    ds = PackedShards(shards, rank=0, world_size=2)
    with pytest.raises(LoaderStateError, match="missing epoch"):
        ds.load_state_dict({k: v for k, v in state.items() if k != "epoch"})
    with pytest.raises(LoaderStateError, match="unknown field"):
        ds.load_state_dict(dict(state, epohc=0))
    with pytest.raises(LoaderStateError, match="must be a mapping"):
        ds.load_state_dict([state])
    ds.load_state_dict(state)                                   # the real one resumes where it stopped
    assert (ds.epoch, ds.position) == (1, 3)


def test_any_one_field_replaced_resumes_as_saved_or_is_refused(shards):
    """Property: whatever one field of a saved state is replaced by, the loader either refuses it or
    holds exactly the state a valid checkpoint with that value would give — never a silent other resume."""
    from hypothesis import given, settings, strategies as st

    from pack.trainer.loader_state import FIELDS, LoaderStateError
    state = _saved_state(shards)
    values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                       st.text(max_size=5), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2))

    @settings(max_examples=300)
    @given(st.sampled_from(FIELDS), values)
    def check(field, value):
        ds = PackedShards(shards, rank=0, world_size=2)
        try:
            ds.load_state_dict(dict(state, **{field: value}))
        except LoaderStateError:
            return
        got = ds.state_dict()
        assert got["epoch"] >= 0 and 0 <= got["position"] < ds.num_packs
        assert got["packs_consumed"] == got["epoch"] * ds.num_packs + got["position"]
        assert all(isinstance(v, int) and v >= 0 for c in ("consumed_samples", "consumed_tokens")
                   for v in got[c].values())
        assert got == dict(state, **{field: value})
    check()
