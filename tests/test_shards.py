"""The shards stage end to end: dp_size=4 shards from a generated, packed corpus, read back with the
plain webdataset library and with PackedShards; determinism; settings; leftover policies; input_ids."""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.base import records as R
from curate.base import StageContext
from pack.profile import ModelProfile
from pack.shards import tario
from pack.trainer.loader import PackedShards
from pack.shards.stage import ShardsStage
from pack.shards.validate import validate_shards
from tests.shards_corpus import SCHEMA, image_refs, make_rows, pack_rows, packed_table, set_profile_image_tokens

L = 1024


def run_stage(table: pa.Table, out: Path, **settings) -> tuple[ShardsStage, object]:
    ctx = StageContext(seed=11, out_dir=str(out), recipe_name="t", recipe_hash="abc123",
                       profile=ModelProfile(context_length=L))
    stage = ShardsStage(context=ctx, **{"dp_size": 4, "micro_batches": 2, "packs_per_shard": 8, **settings})
    return stage, stage.run(table)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> pa.Table:
    return packed_table(tmp_path_factory.mktemp("data"), n=240, context_length=L)


@pytest.fixture(scope="module")
def written(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    stage, result = run_stage(corpus, out)
    return out / "shards", stage, result


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_manifest(written, corpus):
    shards, stage, result = written
    m = json.loads((shards / "manifest.json").read_text())
    assert m["dp_size"] == 4 and m["context_length"] == L and m["recipe_hash"] == "abc123" and m["seed"] == 11
    assert sorted(p.name for p in shards.iterdir()) == [".mmcurate-output", "manifest.json"] + [f"rank-{r:05d}" for r in range(4)]
    assert (shards / "rank-00000" / "shard-000000.tar").is_file()
    assert len({r["packs"] for r in m["ranks"]}) == 1 and m["packs_per_rank"] == m["steps"] * 2
    for r in m["ranks"]:
        for s in r["shards"]:
            assert hashlib.sha256((shards / s["path"]).read_bytes()).hexdigest() == s["sha256"]
    # accounting: kept + leftover = input, and the manifest counts the kept samples
    assert result.kept.num_rows + result.dropped.num_rows == corpus.num_rows
    assert set(result.dropped.column(R.REASON).to_pylist()) <= {"leftover_dropped"}
    assert m["totals"]["samples"] == result.kept.num_rows
    assert m["leftover"]["samples"] == result.dropped.num_rows
    assert not list(shards.parent.glob(".shards.*"))  # temp folders are gone
    assert validate_shards(str(shards)) == []


def test_plain_webdataset_reads_every_sample_once(written, corpus):
    import webdataset as wds
    shards, stage, result = written
    keys: Counter[str] = Counter()
    per_rank = []
    for r in range(4):
        urls = sorted(str(p) for p in (shards / f"rank-{r:05d}").glob("*.tar"))
        n = 0
        for sample in wds.WebDataset(urls, shardshuffle=False).decode():
            doc = sample["json"]
            assert doc["length"] + doc["padding"] == L and doc["cu_seqlens"][-1] == L
            images = sorted(k for k in sample if k.startswith("img"))
            assert images == sorted(im["member"].split(".", 1)[1] for s in doc["segments"] for im in s["images"])
            for seg in doc["segments"]:
                keys[seg["key"]] += 1
            n += 1
        per_rank.append(n)
    assert len(set(per_rank)) == 1 and per_rank[0] > 0
    assert set(keys.values()) == {1}
    assert set(keys) == set(result.kept.column("key").to_pylist())


def test_pack_contents_match_the_records(written, corpus):
    from curate.media.images import read_image_bytes
    shards, _, result = written
    rows = {r["key"]: r for r in corpus.to_pylist()}
    by_key = {}
    for r in range(4):
        for pack in PackedShards(str(shards), rank=r, world_size=4):
            assert pack["rank"] == r
            assert pack["position_ids"].shape == (L,)
            cu = pack["cu_seqlens"].tolist()
            assert [p for p in range(L) if pack["position_ids"][p] == 0] == cu[:-1]
            for img in pack["images"]:
                by_key.setdefault(img["sample"], []).append(img)
            for seg in pack["samples"]:
                row = rows[seg["key"]]
                assert seg["source"] == row["source"] and seg["length"] == row["num_tokens"]
                assert seg.get("text") == row["text"]
                if row["conversations"]:
                    assert seg["conversations"] == row["conversations"]
                assert [im["tokens"] for im in seg["images"]] == row["image_tokens"]
                assert seg["meta"] == json.loads(row["meta"])
    for key, imgs in by_key.items():
        originals = [read_image_bytes(ref) for ref in rows[key]["images"]]
        assert [im["bytes"] for im in imgs] == originals  # original encoding, in order


def test_pack_order_follows_the_pack_plan(written, corpus):
    shards, _, _ = written
    rows = corpus.to_pylist()
    plan: dict[int, list[tuple[int, str]]] = {}
    for r in rows:
        plan.setdefault(r["pack_id"], []).append((r["pack_position"], r["key"]))
    for r in range(4):
        for pack in PackedShards(str(shards), rank=r, world_size=4):
            assert [s["key"] for s in pack["samples"]] == [k for _, k in sorted(plan[pack["pack_id"]])]


def test_report_shows_fill_balance_and_leftover(written):
    _, _, result = written
    rep = result.report["shards"]
    assert 0.9 < rep["fill"] <= 1.0 and len(rep["fill_per_rank"]) == 4
    assert len(set(rep["packs_per_rank"])) == 1
    for name in ("attention", "vit"):
        b = rep["balance"][name]
        assert 1.0 <= b["mean"] <= b["max"]
        assert b["mean"] <= rep["balance_round_robin_baseline"][name]["mean"] + 1e-9
    assert len(rep["per_step"]) == rep["steps"]
    assert len(rep["per_step"][0]["attention_per_rank"]) == 4
    assert rep["leftover"]["policy"] == "drop"
    assert "dropped" in rep["leftover"]["action"] or "nothing to do" in rep["leftover"]["action"]


def test_same_input_gives_identical_bytes_and_replaces_old_output(written, corpus, tmp_path):
    shards, _, _ = written
    run_stage(corpus.take(np.random.default_rng(0).permutation(corpus.num_rows)), tmp_path)  # row order differs
    assert tree_digest(tmp_path / "shards") == tree_digest(shards)
    # a crashed earlier run left a temp folder and an old output: the re-run replaces both
    (tmp_path / ".shards.tmp" / "junk").mkdir(parents=True)
    (tmp_path / "shards" / "rank-00000" / "shard-000000.tar").write_bytes(b"garbage")
    run_stage(corpus, tmp_path)
    assert tree_digest(tmp_path / "shards") == tree_digest(shards)
    assert not (tmp_path / ".shards.tmp").exists() and not (tmp_path / ".shards.old").exists()


def test_tar_headers_are_fixed(written):
    shards, _, _ = written
    with tarfile.open(shards / "rank-00001" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" and m.mode == 0o644
               for m in members)
    assert all("." not in tario.split_member_name(n)[0] for n in names)
    # per pack the members are sorted and contiguous
    keys = [tario.split_member_name(n)[0] for n in names]
    assert keys == sorted(keys)


@pytest.mark.parametrize("policy", ["carry_over", "pad_with_repeats"])
def test_leftover_policies_are_accounted(corpus, tmp_path, policy):
    stage, result = run_stage(corpus, tmp_path, dp_size=3, micro_batches=2, leftover=policy)
    m = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    n_packs = len(set(corpus.column("pack_id").to_pylist()))
    assert n_packs % 6, "the corpus must leave a remainder for this test"
    rep = result.report["shards"]["leftover"]
    if policy == "carry_over":
        assert m["leftover"]["packs"] == n_packs % 6 and (tmp_path / "shards" / "leftover").is_dir()
        assert set(result.dropped.column(R.REASON).to_pylist()) == {"leftover_carried_over"}
        assert "carried over" in rep["action"]
    else:
        assert result.dropped.num_rows == 0
        assert m["leftover"]["repeated_packs"] == 6 - n_packs % 6
        assert "repeated" in rep["action"]
        assert m["totals"]["packs"] == -(-n_packs // 6) * 6
    assert validate_shards(str(tmp_path / "shards")) == []


def test_settings_are_checked():
    ctx = StageContext(out_dir="x", profile=ModelProfile(context_length=1000))
    with pytest.raises(ValueError, match=r"context_length: 1000 \(the model profile's\) is not a multiple of "
                                         r"shards.alignment=128"):
        ShardsStage(context=ctx)
    ShardsStage(context=ctx, alignment=8)  # 1000 = 125 x 8
    # the pack length is the run profile's, the same one the pack stage planned for (pack.packing.stage)
    from pack.packing.stage import PackStage
    assert ShardsStage(context=ctx, alignment=8).capacity() == PackStage(context=ctx).config.context_length == 1000
    assert ShardsStage().capacity() == PackStage().config.context_length == ModelProfile().context_length
    with pytest.raises(TypeError):   # the length is not a shards setting any more (recipes: model.context_length)
        ShardsStage(context_length=1024)
    with pytest.raises(ValueError, match="dp_size"):
        ShardsStage(dp_size=0)
    with pytest.raises(ValueError, match="leftover"):
        ShardsStage(leftover="keep")
    with pytest.raises(ValueError, match="tokenizer"):
        ShardsStage(context=StageContext(profile=ModelProfile(tokenizer="/no/such/dir")), input_ids=True)


def test_missing_pack_plan_is_a_clear_error(tmp_path):
    refs = image_refs(tmp_path / "img", n=2)
    rows = make_rows(8, refs)
    table = R.rows_to_table(rows, SCHEMA)  # no pack_id
    stage = ShardsStage(context=StageContext(out_dir=str(tmp_path), profile=ModelProfile(context_length=L)))
    with pytest.raises(ValueError, match="pack_id"):
        stage.run(table)


def test_unreadable_image_is_quarantined_and_the_pack_stays_valid(tmp_path):
    refs = image_refs(tmp_path / "img", n=4)
    rows = pack_rows(make_rows(40, refs, seed=1), L)
    broken = next(r for r in rows if r["images"])
    broken["images"] = [dict(broken["images"][0], uri=str(tmp_path / "gone.jpg"), offset=-1, size=-1, member=None)]
    stage, result = run_stage(R.rows_to_table(rows, SCHEMA), tmp_path, dp_size=2, micro_batches=1)
    q = result.dropped.filter(pa.compute.equal(result.dropped.column(R.STATUS), R.QUARANTINED))
    assert q.column("key").to_pylist() == [broken["key"]]
    assert "gone.jpg" in q.column(R.DETAIL)[0].as_py()
    assert validate_shards(str(tmp_path / "shards")) == []


def test_input_ids_with_the_builtin_tokenizer(tmp_path):
    from pack import tokens as T
    tok = T.load_tokenizer(None)
    refs = image_refs(tmp_path / "img", n=4)
    rows = set_profile_image_tokens(make_rows(24, refs, seed=2))
    for r in rows:  # num_tokens as count_tokens computes them
        r["num_tokens"] = len(T.sample_input_ids(r, tok, r["image_tokens"]))
    table = R.rows_to_table(pack_rows(rows, L), SCHEMA)
    stage, result = run_stage(table, tmp_path, dp_size=2, micro_batches=1, input_ids=True)
    assert result.kept.num_rows + result.dropped.num_rows == 24
    assert validate_shards(str(tmp_path / "shards")) == []
    # ids, labels and grids are the same bytes whatever the input row order
    other = tmp_path / "again"
    run_stage(table.take(np.random.default_rng(1).permutation(table.num_rows)), other, dp_size=2, micro_batches=1,
              input_ids=True)
    assert tree_digest(other / "shards") == tree_digest(tmp_path / "shards")
    by_key = {r["key"]: r for r in rows}
    pad = tok.token_id("<|endoftext|>")
    for rank in range(2):
        for pack in PackedShards(str(tmp_path / "shards"), rank=rank, world_size=2):
            ids = pack["input_ids"]
            assert ids.shape == (L,) and ids.dtype == np.int32
            cu = pack["cu_seqlens"].tolist()
            for j, seg in enumerate(pack["samples"]):
                row = by_key[seg["key"]]
                assert ids[cu[j]:cu[j + 1]].tolist() == T.sample_input_ids(row, tok, row["image_tokens"])
            assert (ids[pack["length"]:] == pad).all()


def test_tokenizer_mismatch_stops_the_run(tmp_path):
    from pack.shards.ids import TokenCountMismatch
    refs = image_refs(tmp_path / "img", n=2)
    rows = pack_rows(set_profile_image_tokens(make_rows(8, refs, seed=3)), L)   # num_tokens are random: the tokenizer disagrees
    with pytest.raises(TokenCountMismatch, match="num_tokens"):
        run_stage(R.rows_to_table(rows, SCHEMA), tmp_path, dp_size=2, micro_batches=1, input_ids=True)
    assert not (tmp_path / "shards").exists()


def test_truncated_sample_keeps_its_vision_tokens(tmp_path):
    """A sample the pack stage truncated (overlong: truncate) loses text tokens from its end only."""
    from pack import tokens as T
    tok = T.load_tokenizer(None)
    refs = image_refs(tmp_path / "img", n=2)
    rows = set_profile_image_tokens(make_rows(4, refs, seed=4))
    for r in rows:
        r["num_tokens"] = len(T.sample_input_ids(r, tok, r["image_tokens"]))
    long = next(r for r in rows if r["images"] and r.get("text"))
    long["text"] = "many words " * 800
    full = T.sample_input_ids(long, tok, long["image_tokens"])
    assert len(full) > L
    long["truncated_from"], long["num_tokens"] = len(full), L - 8
    schema = SCHEMA.append(pa.field("truncated_from", pa.int64()))
    table = R.rows_to_table(pack_rows(rows, L), schema)
    run_stage(table, tmp_path, dp_size=1, micro_batches=1, input_ids=True)
    pack = next(p for p in PackedShards(str(tmp_path / "shards"), rank=0, world_size=1)
                if any(s["key"] == long["key"] for s in p["samples"]))
    j = [s["key"] for s in pack["samples"]].index(long["key"])
    seg = pack["input_ids"][pack["cu_seqlens"][j]:pack["cu_seqlens"][j + 1]].tolist()
    assert len(seg) == L - 8 and pack["samples"][j]["truncated_from"] == len(full)
    pad = tok.token_id(T.IMAGE_PAD)
    assert seg.count(pad) == full.count(pad) == sum(long["image_tokens"])
    assert seg[:100] == full[:100]
    im_end = tok.token_id(T.IM_END)
    assert seg.count(im_end) == full.count(im_end) and seg[-1] == im_end  # the turn still closes


def test_a_replaced_image_is_quarantined_not_written_with_stale_metadata(tmp_path):
    """The record says one size (and hash); the file now holds another image: media_changed."""
    import hashlib
    refs = image_refs(tmp_path / "img", n=4)
    plain = [r for r in refs if r["member"] is None]          # plain files: can be replaced in place
    rows = pack_rows(make_rows(16, refs, seed=6), L)
    using = [r for r in rows if r["images"] and r["images"][0]["uri"] == plain[0]["uri"]]
    assert using
    hashed = next(r for r in rows if r["images"] and r["images"][0]["uri"] == plain[1]["uri"])
    data = open(plain[1]["uri"], "rb").read()
    for im in hashed["images"]:
        im["sha256"] = hashlib.sha256(data).hexdigest() if im["uri"] == plain[1]["uri"] else None
    schema = SCHEMA   # image refs carry the sha256 ingest computed (curate.base.records.IMAGE_REF)
    from PIL import Image
    import io
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(buf, format="JPEG")
    with open(plain[0]["uri"], "wb") as fh:                    # another size and another header
        fh.write(buf.getvalue())
    with open(plain[1]["uri"], "r+b") as fh:                   # same size, one byte changed
        fh.seek(len(data) // 2)
        fh.write(bytes([data[len(data) // 2] ^ 0xFF]))
    stage, result = run_stage(R.rows_to_table(rows, schema), tmp_path, dp_size=2, micro_batches=1)
    q = result.dropped.filter(pa.compute.equal(result.dropped.column(R.STATUS), R.QUARANTINED)).to_pylist()
    reasons = {r["key"]: (r[R.REASON], r[R.DETAIL]) for r in q}
    for r in using:
        assert reasons[r["key"]][0] == "media_changed" and "the record says" in reasons[r["key"]][1]
    assert reasons[hashed["key"]][0] == "media_changed" and "sha256" in reasons[hashed["key"]][1]
    assert validate_shards(str(tmp_path / "shards")) == []
