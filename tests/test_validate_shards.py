"""`validate shards`: passes on good output, names the first problem on damaged output."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from curate.base import StageContext
from pack.profile import ModelProfile
from pack import packformat as F
from pack.shards import tario
from pack.shards.stage import ShardsStage
from pack.shards.validate import validate_shards
from pipelines.present.cli import main
from tests.shards_corpus import packed_table

L = 1024


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("validate")
    table = packed_table(tmp / "data", n=160, context_length=L, seed=7)
    ctx = StageContext(seed=2, out_dir=str(tmp), profile=ModelProfile(context_length=L))
    ShardsStage(context=ctx, dp_size=4, micro_batches=1, packs_per_shard=4, leftover="carry_over").run(table)
    return tmp / "shards"


@pytest.fixture
def copy(good, tmp_path) -> Path:
    dst = tmp_path / "shards"
    shutil.copytree(good, dst)
    return dst


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def save_manifest(d: Path, m: dict) -> None:
    (d / "manifest.json").write_text(json.dumps(m))


def rewrite_shard(d: Path, rel: str, edit) -> None:
    """Apply `edit(list of (name, bytes)) -> list` to a shard and make the manifest's checksum agree."""
    path = d / rel
    with open(path, "rb") as fh:
        members = [(r.name, tario.read_member(fh, r)) for r in tario.index_tar(str(path))]
    tario.write_tar(str(path), edit(members))
    m = manifest(d)
    for r in m["ranks"]:
        for s in r["shards"]:
            if s["path"] == rel:
                s["sha256"], s["bytes"] = tario.sha256_file(str(path)), path.stat().st_size
    save_manifest(d, m)


def test_good_output_passes(good, capsys):
    assert validate_shards(str(good)) == []
    assert main(["validate", "shards", str(good)]) == 0      # the one printer of shard problems: the CLI
    assert capsys.readouterr().out.strip() == f"ok: shards {good}"


def test_flipped_byte_fails_with_the_shard_named(copy, capsys):
    rel = manifest(copy)["ranks"][2]["shards"][1]["path"]
    data = bytearray((copy / rel).read_bytes())
    data[700] ^= 0x01
    (copy / rel).write_bytes(bytes(data))
    problems = validate_shards(str(copy))
    assert problems[0].startswith(f"checksum mismatch: {rel} sha256")
    assert main(["validate", "shards", str(copy)]) == 1
    assert capsys.readouterr().err.startswith(f"invalid shards: checksum mismatch: {rel} sha256")


def test_missing_shard_fails(copy):
    rel = manifest(copy)["ranks"][3]["shards"][0]["path"]
    (copy / rel).unlink()
    assert validate_shards(str(copy))[0] == f"missing shard: {rel} is listed in manifest.json but does not exist"


def test_missing_leftover_shard_fails(copy):
    m = manifest(copy)
    assert m["leftover"]["shards"], "this corpus should leave packs over"
    (copy / m["leftover"]["shards"][0]["path"]).unlink()
    assert validate_shards(str(copy))[0].startswith("missing shard: leftover/")


def test_unbalanced_manifest_fails(copy):
    m = manifest(copy)
    m["ranks"][1]["packs"] -= 1
    m["ranks"][1]["shards"][-1]["packs"] -= 1
    save_manifest(copy, m)
    first = validate_shards(str(copy))[0]
    assert first.startswith("unbalanced manifest: rank-00001 has")
    assert "every rank must have the same number of packs" in first


def test_rank_with_a_pack_removed_consistently_is_still_unbalanced(copy):
    """Even when checksums and counts are made to agree, a rank with fewer packs is refused."""
    m = manifest(copy)
    rel = m["ranks"][0]["shards"][-1]["path"]
    last_key = {}

    def drop_last_pack(members):
        key = tario.split_member_name(members[-1][0])[0]
        last_key["k"] = key
        return [(n, b) for n, b in members if tario.split_member_name(n)[0] != key]

    rewrite_shard(copy, rel, drop_last_pack)
    m = manifest(copy)
    for x in (m["ranks"][0], m["ranks"][0]["shards"][-1], m["totals"]):
        x["packs"] -= 1
    save_manifest(copy, m)
    assert validate_shards(str(copy))[0].startswith("unbalanced manifest: rank-00000 has")


def test_inconsistent_cu_seqlens_fails(copy):
    rel = manifest(copy)["ranks"][0]["shards"][0]["path"]

    def break_cu(members):
        out = []
        for name, data in members:
            if name.endswith(".json") and not out_done:
                doc = json.loads(data)
                doc["cu_seqlens"][1] += 1
                data = F.dumps(doc)
                out_done.append(1)
            out.append((name, data))
        return out
    out_done: list = []
    rewrite_shard(copy, rel, break_cu)
    first = validate_shards(str(copy))[0]
    assert rel in first and "cu_seqlens" in first


def test_duplicate_sample_key_fails(copy):
    m = manifest(copy)
    rel0, rel1 = m["ranks"][0]["shards"][0]["path"], m["ranks"][1]["shards"][0]["path"]
    with open(copy / rel0, "rb") as fh:
        ref = next(r for r in tario.index_tar(str(copy / rel0)) if r.name.endswith(".json"))
        stolen = json.loads(tario.read_member(fh, ref))["segments"][0]["key"]

    def reuse_key(members):
        out, done = [], False
        for name, data in members:
            if name.endswith(".json") and not done:
                doc = json.loads(data)
                doc["segments"][0]["key"] = stolen
                data, done = F.dumps(doc), True
            out.append((name, data))
        return out
    rewrite_shard(copy, rel1, reuse_key)
    problems = validate_shards(str(copy))
    assert problems and problems[0].startswith(f"sample key {stolen!r} appears 2 times")


def test_missing_or_broken_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    assert "not valid JSON" in validate_shards(str(copy))[0]
    (copy / "manifest.json").unlink()
    assert validate_shards(str(copy))[0].endswith("manifest.json is missing")


def test_unlisted_shard_and_wrong_totals(copy):
    m = manifest(copy)
    shutil.copy(copy / m["ranks"][0]["shards"][0]["path"], copy / "rank-00000" / "shard-000999.tar")
    assert validate_shards(str(copy))[0] == "unlisted shard: rank-00000/shard-000999.tar is not in manifest.json"
    (copy / "rank-00000" / "shard-000999.tar").unlink()
    m["totals"]["samples"] += 1
    save_manifest(copy, m)
    assert validate_shards(str(copy))[0].startswith("manifest.json totals: samples")


# --- the pack JSON parser is strict and never crashes on damaged input ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def pack_doc(lengths: list[int], images: list[int], context_length: int = 256) -> dict:
    key = F.pack_key(0, 0, 0)
    segs = [{"key": f"s/{i}", "source": "s", "category": "caption", "length": n, "text": "x",
             "images": [{"member": F.image_member(key, i, "jpg"), "tokens": images[i % len(images)] if images else 1}]
             if images else [], "videos": []} for i, n in enumerate(lengths)]
    used = sum(lengths)
    return {"format": F.PACK_FORMAT, "pack_key": key, "pack_id": 3, "rank": 0, "step": 0, "micro_batch": 0,
            "repeat_of": None, "context_length": context_length, "length": used, "padding": context_length - used,
            "cu_seqlens": F.cu_seqlens(lengths, context_length), "segments": segs, "input_ids": None, "labels": None}


lengths_st = st.lists(st.integers(1, 64), min_size=0, max_size=4)


@settings(max_examples=80, deadline=None)
@given(lengths=lengths_st, images=st.lists(st.integers(1, 50), max_size=3))
def test_parse_pack_accepts_what_the_format_describes(lengths, images):
    doc = F.parse_pack(F.dumps(pack_doc(lengths, images)), "t", 256)
    cu = doc["cu_seqlens"]
    assert cu[-1] == 256 and cu[0] == 0
    pos = F.position_ids(cu)
    assert pos.shape == (256,)
    assert [i for i in range(256) if pos[i] == 0] == cu[:-1]


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st.filter(bool), field=st.sampled_from(
    ["format", "pack_key", "context_length", "length", "padding", "cu_seqlens", "segments", "rank", "input_ids"]),
    value=st.one_of(st.none(), st.integers(-3, 300), st.text(max_size=5), st.booleans(),
                    st.lists(st.integers(0, 300), max_size=4)), drop=st.booleans())
def test_parse_pack_rejects_damage_with_a_format_error(lengths, field, value, drop):
    doc = pack_doc(lengths, [])
    original = doc[field]
    if drop:
        del doc[field]
    else:
        doc[field] = value
    still_valid = (value == original and type(value) is type(original)) or \
        (field == "input_ids" and value is None) or \
        (field == "rank" and (value is None or (type(value) is int and value >= 0)))
    if not drop and still_valid:
        return
    with pytest.raises(F.PackFormatError):
        F.parse_pack(F.dumps(doc), "t", 256)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64))
def test_parse_pack_garbage_bytes(data):
    with pytest.raises(F.PackFormatError):
        F.parse_pack(data, "t", 256)
