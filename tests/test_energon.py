"""Megatron-Energon loads the shards as the shards stage wrote them: no ``energon prepare``, no user
code. Checked with Energon's own API (get_train_dataset, get_loader, get_savable_loader, WorkerConfig)
on shards from the bundled sample corpus run through count_tokens -> pack -> shards by the runner:

* the metadata equals what ``energon prepare`` writes (tar indexes byte for byte, shard counts, split);
* with the documented settings Energon yields, on every rank, PackedShards' packs in PackedShards'
  order — every field (input_ids, labels, M-RoPE position_ids, cu_seqlens, image bytes ...);
* what Energon changes otherwise (worker slicing, shuffling), measured: every rank still sees packs of
  the same planned (step, micro-batch) at every iteration, but a training step's micro-batches then
  come from different planned steps.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

try:
    import megatron.energon as E
except ImportError as exc:  # pragma: no cover - the energon extra is part of `make install`
    pytest.skip(f"megatron-energon cannot be imported ({exc}); `pip install -e .[energon]`", allow_module_level=True)

from pack.energon import meta as M
from pack.trainer.collate import collate_packs
from pack.energon.cooker import PackSample, PackTaskEncoder
from pack.trainer.loader import PackedShards
from pack.shards import tario
DP, MICRO = 2, 2
RECIPE = """
name: energon-packs
seed: 7
sources:
  - {{name: photos, path: "{d}/photos/*.tar", format: webdataset, category: caption}}
  - {{name: conversations, path: "{d}/conversations.jsonl", format: llava, category: vqa}}
  - {{name: text, path: "{d}/text.parquet", format: parquet, category: text}}
stages:
  - {{name: image_filter, settings: {{preset: default}}}}
  - {{name: count_tokens}}
  - {{name: pack, settings: {{context_length: 1024}}}}
  - {{name: shards, settings: {{dp_size: {dp}, micro_batches: {mb}, packs_per_shard: 3, leftover: pad_with_repeats,
                              input_ids: true}}}}
model: {{preset: qwen2-vl, max_pixels: 100352}}
"""
# The settings that keep PackedShards' order (README, "Training with Megatron-Energon").
IN_ORDER = dict(batch_size=None, shuffle_buffer_size=None, max_samples_per_sequence=None,
                shuffle_over_epochs_multiplier=None, parallel_shard_iters=1)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    from demo_data import sample as sample_data
    from pipelines.recipe import load
    from pipelines.runner import run
    work = tmp_path_factory.mktemp("energon")
    sample_data.build(work / "sample")
    (work / "recipe.yaml").write_text(RECIPE.format(d=work / "sample", dp=DP, mb=MICRO))
    run(load(work / "recipe.yaml"), out=work / "out", executor="inline", progress=False)
    return work / "out"


@pytest.fixture(scope="module")
def shards(run_out) -> Path:
    return run_out / "shards"


@pytest.fixture(scope="module")
def reference(shards) -> list[list[dict]]:
    """PackedShards' packs per rank, in its order."""
    out = []
    for r in range(DP):
        ds = PackedShards(str(shards), rank=r, world_size=DP)
        out.append([ds.read_pack(i) for i in range(ds.num_packs)])
    return out


def energon_packs(shards: Path, rank: int, n: int, workers: int = 0, **settings) -> list[dict]:
    """The first `n` packs Energon yields for `rank`'s folder: one dataset per rank folder, loaded as
    the only rank (world_size=1) with Energon's loader."""
    wc = E.WorkerConfig(rank=0, world_size=1, num_workers=workers)
    ds = E.get_train_dataset(str(shards / f"rank-{rank:05d}"), worker_config=wc, **{**IN_ORDER, **settings})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # torch: pin_memory without an accelerator
        it = iter(E.get_loader(ds))
        samples = [next(it) for _ in range(n)]
    assert all(isinstance(s, PackSample) for s in samples)
    return [s.pack for s in samples]


def assert_same_pack(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[name], np.ndarray) and got[name].dtype == value.dtype, name
            np.testing.assert_array_equal(got[name], value, err_msg=name)
        else:
            assert got[name] == value, name


def test_metadata_is_what_energon_prepare_writes(shards, tmp_path):
    """Our tar indexes are byte-identical to Energon's own ``prepare``; shard counts and split agree."""
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator
    rank_dir = shards / "rank-00001"
    tars = sorted(p.name for p in rank_dir.glob("*.tar"))
    assert len(tars) >= 2
    for t in tars:
        shutil.copy(rank_dir / t, tmp_path / t)
    WebdatasetPreparator.prepare_dataset(tmp_path, tars, split_parts_patterns=[("train", ".*")], workers=1)
    for t in tars:
        assert (rank_dir / (t + ".idx")).read_bytes() == (tmp_path / (t + ".idx")).read_bytes()
    ours = json.loads((rank_dir / ".nv-meta" / ".info.json").read_text())
    theirs = json.loads((tmp_path / ".nv-meta" / ".info.json").read_text())
    assert ours["shard_counts"] == theirs["shard_counts"]
    import yaml
    from braceexpand import braceexpand          # Energon's prepare brace-collapses the shard names
    ours, theirs = (yaml.safe_load((d / ".nv-meta" / "split.yaml").read_text())["split_parts"]["train"]
                    for d in (rank_dir, tmp_path))
    assert ours == tars == [n for pattern in theirs for n in braceexpand(pattern)]


def test_energon_info_and_lint_accept_a_rank_folder(shards):
    """Energon's own CLI: ``info`` names our sample type, ``lint`` loads every pack (train; val and
    test are empty and skipped)."""
    from click.testing import CliRunner
    from megatron.energon.cli.main import main
    info = CliRunner().invoke(main, ["info", str(shards / "rank-00000")])
    assert info.exit_code == 0, info.output
    assert "PackSample <pack.energon.cooker.PackSample>" in info.output and "`train`: 100%" in info.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lint = CliRunner().invoke(main, ["lint", str(shards / "rank-00001")])
    assert lint.exit_code == 0, lint.output
    assert "Skipping empty split part val" in lint.output


def test_metadata_is_deterministic_relative_and_in_the_stage_outputs(run_out, shards):
    meta = {p.relative_to(shards): p.read_bytes() for p in sorted(shards.rglob("*"))
            if p.is_file() and (".nv-meta" in p.parts or p.name.endswith(".idx"))}
    assert len(meta) == DP * 3 + sum(len(list((shards / f"rank-{r:05d}").glob("*.tar"))) for r in range(DP))
    assert not any(str(run_out).encode() in data or b"/tmp" in data for data in meta.values())
    manifest = json.loads((shards / "manifest.json").read_text())
    for entry in manifest["ranks"]:   # same bytes when written again from the manifest
        for name, data in M.rank_metadata(manifest, entry).items():
            assert meta[Path(entry["dir"]) / ".nv-meta" / name] == data
    done = json.loads(next((run_out / "stages").glob("*_shards/_COMPLETE.json")).read_text())
    assert {f"shards/{p}" for p in meta} <= set(done["outputs"])     # the resume inventory sees them


def test_rank_metadata_carries_no_driver_path():
    manifest = {"context_length": 1024, "model": {"preset": "qwen2-vl", "tokenizer": "/home/me/tokenizer"},
                "ranks": [{"rank": 0, "dir": "rank-00000", "shards": [{"path": "rank-00000/shard-000000.tar",
                                                                       "packs": 3}]}]}
    meta = M.rank_metadata(manifest, manifest["ranks"][0])
    assert all(b"/home/me" not in data for data in meta.values())
    assert json.loads(meta[M.INFO_NAME]) == {"shard_counts": {"shard-000000.tar": 3}}


MEMBER_SIZES = st.lists(st.lists(st.integers(0, 1500), min_size=1, max_size=4), min_size=1, max_size=6)


@given(MEMBER_SIZES)
def test_tar_index_is_each_sample_header_then_the_end(tmp_path_factory, samples):
    """Against the USTAR layout (a 512-byte header, data padded to 512) and read by Energon's reader."""
    from megatron.energon.flavors.webdataset.itar import TarIndexReader
    path = str(tmp_path_factory.mktemp("itar") / "shard-000000.tar")
    members, expected, pos = [], [], 0
    for k, sizes in enumerate(samples):
        expected.append(pos)
        for j, size in enumerate(sizes):
            members.append((f"p{k:04d}.part{j}.bin", bytes(size)))
            pos += 512 + -(-size // 512) * 512
    tario.write_tar(path, members)
    M.write_tar_index(path)
    reader = TarIndexReader(path)
    assert list(reader) == M.tar_sample_offsets(path) == expected + [pos]
    reader.close()


def test_energon_yields_packedshards_packs_in_order_on_every_rank(shards, reference):
    for r in range(DP):
        want = reference[r]
        got = energon_packs(shards, r, 2 * len(want))
        for g, w in zip(got, want):
            assert_same_pack(g, w)
        # Energon loops (training): the next epoch comes in the same order
        assert [p["pack_key"] for p in got[len(want):]] == [p["pack_key"] for p in want]
    assert reference[0][0]["position_ids"].shape == (3, 1024)        # M-RoPE positions travel too
    assert any(p["images"] for p in reference[0]) and reference[0][0]["labels"] is not None


def test_one_worker_process_keeps_the_order(shards, reference):
    got = energon_packs(shards, 1, len(reference[1]), workers=1)
    assert [p["pack_key"] for p in got] == [p["pack_key"] for p in reference[1]]


def test_task_encoder_batches_are_collate_packs_batches(shards, reference):
    wc = E.WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = E.get_train_dataset(str(shards / "rank-00000"), worker_config=wc,
                             **{**IN_ORDER, "batch_size": MICRO}, task_encoder=PackTaskEncoder())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = iter(E.get_loader(ds))
        batches = [next(it) for _ in range(len(reference[0]) // MICRO)]
    for b, batch in enumerate(batches):
        want = collate_packs(reference[0][b * MICRO:(b + 1) * MICRO])
        assert batch["pack_keys"] == want["pack_keys"]
        for name in ("input_ids", "labels", "position_ids", "mm_token_type_ids", "cu_seqlens", "segment_ids",
                     "attention_mask", "image_token_counts"):
            assert batch[name].equal(want[name]), name
        assert batch["image_bytes"] == want["image_bytes"]


def test_pixel_values_through_energon(shards):
    """``pixel_values=True`` reaches the factory through get_train_dataset (first two packs: the image
    processor is the slow part and is PackedShards' own)."""
    pytest.importorskip("transformers")
    wc = E.WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = E.get_train_dataset(str(shards / "rank-00000"), worker_config=wc, **IN_ORDER, pixel_values=True)
    want = PackedShards(str(shards), rank=0, world_size=DP, pixel_values=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = iter(E.get_loader(ds))
        for i in range(2):
            got, ref = next(it).pack, want.read_pack(i)
            assert len(ref["image_grid_thw"]) == len(ref["images"]) > 0
            np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
            np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"])


def test_energon_state_resumes_at_the_next_pack(shards, reference):
    wc = E.WorkerConfig(rank=0, world_size=1, num_workers=0)
    make = lambda: E.get_savable_loader(E.get_train_dataset(str(shards / "rank-00001"), worker_config=wc,  # noqa: E731
                                                            **IN_ORDER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = make()
        it = iter(loader)
        [next(it) for _ in range(3)]
        state = loader.save_state_rank()
        resumed = make()
        resumed.restore_state_rank(state)
        nxt = next(iter(resumed)).pack["pack_key"]
    assert nxt == reference[1][3]["pack_key"]


def test_the_readme_snippet_runs_on_the_shards(shards, tmp_path, monkeypatch, capsys):
    import re
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "get_train_dataset" in b]
    (tmp_path / "out" / "demo").mkdir(parents=True)
    (tmp_path / "out" / "demo" / "shards").symlink_to(shards)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(snippet, "README.md", "exec"), {})
    assert "['r00000-s000000-m000'] torch.Size([1, 1024]) torch.Size([3, 1, 1024])" in capsys.readouterr().out


def planned(packs: list[dict]) -> list[tuple[int, int]]:
    return [(p["step"], p["micro_batch"]) for p in packs]


@pytest.mark.parametrize("workers, settings", [
    (2, {}),                                                                  # worker slicing
    (0, {"shuffle_buffer_size": 4}),                                          # sample shuffle buffer
    (0, {"shuffle_over_epochs_multiplier": 1, "parallel_shard_iters": 16}),   # shard-slice shuffle
], ids=["two-workers", "shuffle-buffer", "shard-shuffle"])
def test_what_energon_changes_otherwise(shards, reference, workers, settings):
    """The same settings on every rank: every iteration still gives each rank the pack of the same
    planned (step, micro-batch) — Energon seeds its RNG from the worker config only, and every rank
    folder has the same number of packs and shard sizes — but not in order, and with micro_batches > 1
    a training step's packs come from different planned steps (the step's balance is not the plan's)."""
    n = len(reference[0])
    runs = [energon_packs(shards, r, n, workers=workers, **settings) for r in range(DP)]
    assert planned(runs[0]) == planned(runs[1])                    # rank alignment holds
    assert planned(runs[0]) != planned(reference[0])               # the order does not
    steps = [{s for s, _ in planned(runs[0])[i:i + MICRO]} for i in range(0, n, MICRO)]
    assert any(len(s) > 1 for s in steps)                          # training steps mix planned steps
    if workers:   # each worker reads a contiguous slice, the loader takes from the workers in turn
        position = [p["index"] for p in runs[0]]
        assert sorted(position) == list(range(n)) and n % workers == 0
        for w in range(workers):
            assert position[w::workers] == list(range(position[w], position[w] + n // workers))
    by_key = {p["pack_key"]: p for p in reference[1]}
    for p in runs[1]:                                              # the packs themselves are intact
        assert_same_pack({**p, "index": 0}, {**by_key[p["pack_key"]], "index": 0, "epoch": 0})


# --- index.sqlite where a key lookup needs it; the leftover folder -------------------------------------
def _index_rows(sqlite_path: Path) -> dict[str, list[tuple]]:
    import sqlite3
    with sqlite3.connect(sqlite_path) as db:
        return {"samples": sorted(db.execute("SELECT tar_file_id, sample_key, sample_index, byte_offset, byte_size "
                                             "FROM samples")),
                "parts": sorted(db.execute("SELECT tar_file_id, sample_index, part_name, content_byte_offset, "
                                           "content_byte_size FROM sample_parts"))}


def test_index_sqlite_has_energon_prepares_rows_and_serves_its_key_lookup(shards, tmp_path):
    """``python -m pack.energon.index`` writes the rows ``energon prepare`` writes; Energon's own
    SqliteIndexReader then finds a pack's bytes and a member's bytes by key."""
    from megatron.energon.epathlib import EPath
    from megatron.energon.flavors.webdataset.indexing import SqliteIndexReader
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator
    from pack.energon.index import main as write_indexes
    ours = tmp_path / "shards"
    shutil.copytree(shards, ours)
    write_indexes([str(ours)])
    rank_dir = ours / "rank-00001"
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    tars = sorted(p.name for p in rank_dir.glob("*.tar"))
    for t in tars:
        shutil.copy(rank_dir / t, prepared / t)
    WebdatasetPreparator.prepare_dataset(prepared, tars, split_parts_patterns=[("train", ".*")], workers=1)
    assert _index_rows(rank_dir / ".nv-meta" / "index.sqlite") == _index_rows(prepared / ".nv-meta" / "index.sqlite")
    assert (ours / "rank-00000" / ".nv-meta" / "index.sqlite").is_file()
    refs = tario.index_tar(str(rank_dir / tars[1]))
    member = next(r for r in refs if r.name.endswith(".json"))
    key = member.name.split(".", 1)[0]
    reader = SqliteIndexReader(EPath(rank_dir / ".nv-meta" / "index.sqlite"))
    try:
        pointer = reader.get_sample_pointer_by_key(key)
        part = reader.get_sample_part(key, "json")
    finally:
        reader.close()
    assert pointer.tar_file_id == 1 and part.raw_byte_offset == member.offset and part.raw_byte_size == member.size


CARRY_OVER = """
name: energon-leftover
seed: 3
sources:
  - {{name: text, path: "{d}/text.parquet", format: parquet, category: text}}
stages:
  - {{name: count_tokens}}
  - {{name: pack, settings: {{context_length: 256}}}}
  - {{name: shards, settings: {{dp_size: 2, micro_batches: 2, leftover: carry_over, input_ids: true}}}}
model: qwen2-vl
"""


def test_carried_over_packs_are_an_energon_dataset_too(tmp_path):
    """``leftover: carry_over`` writes shards/leftover/ with its own .nv-meta (rank: null); Energon
    loads it and yields the packs PackedShards' reader parses, every one marked rank None."""
    from demo_data import sample as sample_data
    from pipelines.recipe import load
    from pipelines.runner import run
    sample_data.build(tmp_path / "sample")
    (tmp_path / "recipe.yaml").write_text(CARRY_OVER.format(d=tmp_path / "sample"))
    run(load(tmp_path / "recipe.yaml"), out=tmp_path / "out", executor="inline", progress=False)
    shards = tmp_path / "out" / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    left = manifest["leftover"]
    assert left["packs"] > 0 and left["shards"]
    meta = shards / "leftover" / ".nv-meta"
    assert sorted(p.name for p in meta.iterdir()) == [".info.json", "dataset.yaml", "split.yaml"]
    import yaml
    assert yaml.safe_load((meta / "dataset.yaml").read_text())["rank"] is None
    wc = E.WorkerConfig(rank=0, world_size=1, num_workers=0)
    ds = E.get_train_dataset(str(shards / "leftover"), worker_config=wc, **IN_ORDER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = iter(E.get_loader(ds))
        packs = [next(it).pack for _ in range(left["packs"])]
    assert [p["pack_key"] for p in packs] == [m.name.split(".", 1)[0] for s in left["shards"]
                                              for m in tario.index_tar(str(shards / s["path"])) if m.name.endswith(".json")]
    assert all(p["rank"] is None and p["input_ids"].shape == (256,) for p in packs)
    assert sum(len(p["samples"]) for p in packs) == left["samples"]
