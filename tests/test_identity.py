"""Content identities: a same-size rewrite is seen, referenced images are covered, remote stores hash."""
from __future__ import annotations

import json
import os

import fsspec

from curate.media import identity as ID
from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import jpeg, write_tar
from tests.corpus import ingest_resumed


def test_same_size_rewrite_with_restored_mtime_changes_the_identity(tmp_path):
    f = tmp_path / "a.tar"
    f.write_bytes(b"A" * 4096)
    st = os.stat(f)
    cache = ID.IdentityCache(tmp_path / "cache.json")
    before = ID.file_identity(str(f), cache)
    f.write_bytes(b"B" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))    # same size, same mtime: the old fingerprint's blind spot
    after = ID.file_identity(str(f), cache)
    assert before["size"] == after["size"] and before["sha256"] != after["sha256"]


def test_cache_reuses_a_hash_only_while_the_stat_key_holds(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    cache = ID.IdentityCache(tmp_path / "c.json")
    first = ID.file_identity(str(f), cache)
    cache.save()
    reloaded = ID.IdentityCache(tmp_path / "c.json")
    assert reloaded.get(str(f), ID._stat_key(str(f))) == first["sha256"]


def test_remote_store_without_etag_is_hashed_not_named(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/idb/a.tar", b"one")
    one = ID.file_identity("memory://idb/a.tar")
    fs.pipe("/idb/a.tar", b"two")
    two = ID.file_identity("memory://idb/a.tar")
    assert one["sha256"] != two["sha256"] and one["size"] == two["size"] == 3


def _llava_source(root):
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(jpeg(64, 48, seed=1))
    (root / "c.jsonl").write_text(json.dumps({"id": "a", "image": "img/a.jpg", "conversations": [
        {"from": "human", "value": "<image>what?"}, {"from": "gpt", "value": "a picture"}]}) + "\n")
    return parse({"name": "m", "seed": 0, "stages": [],
                  "sources": [{"name": "c", "path": str(root / "c.jsonl"), "format": "llava"}]})


def test_replacing_a_referenced_image_re_ingests_and_records_the_new_bytes(tmp_path):
    recipe = _llava_source(tmp_path / "src")
    out = tmp_path / "out"
    first = run(recipe, out=out, executor="inline", progress=False)
    ref = first.kept(columns=["images"]).to_pylist()[0]["images"][0]
    assert ref["sha256"] == ID.sha256_bytes((tmp_path / "src" / "img" / "a.jpg").read_bytes())
    img = tmp_path / "src" / "img" / "a.jpg"
    st = os.stat(img)
    new = jpeg(200, 150, seed=2)
    img.write_bytes(new)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = run(recipe, out=out, executor="inline", progress=False)
    assert not ingest_resumed(second), "a changed image must re-run ingest"
    ref2 = second.kept(columns=["images"]).to_pylist()[0]["images"][0]
    assert (ref2["size"], ref2["width"], ref2["sha256"]) == (len(new), 200, ID.sha256_bytes(new))
    third = run(recipe, out=out, executor="inline", progress=False)
    assert ingest_resumed(third) is True


def test_same_size_rewrite_of_a_source_tar_re_ingests(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    tar = write_tar(data / "a.tar", [("k.jpg", jpeg(64, 48, seed=1)), ("k.txt", b"first caption!")])
    recipe = parse({"name": "m", "seed": 0, "stages": [],
                    "sources": [{"name": "w", "path": str(data / "*.tar"), "format": "webdataset"}]})
    out = tmp_path / "out"
    run(recipe, out=out, executor="inline", progress=False)
    st = os.stat(tar)
    write_tar(tar, [("k.jpg", jpeg(64, 48, seed=1)), ("k.txt", b"other caption!")])
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(tar).st_size == st.st_size
    again = run(recipe, out=out, executor="inline", progress=False)
    assert not ingest_resumed(again)
    assert again.kept(columns=["text"]).column("text").to_pylist() == ["other caption!"]


def test_stale_media_skips_hashing_files_untouched_since_ingest(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x" * 10)
    ref = {"uri": str(img), "member": None, "size": 10, "sha256": ID.sha256_bytes(b"x" * 10)}
    assert ID.stale_media([ref]) == []
    lie = {**ref, "sha256": "0" * 64}    # a wrong hash is found when the file may have changed...
    assert ID.stale_media([lie]) == [str(img)]
    far_future = os.stat(img).st_ctime_ns + 10**12
    assert ID.stale_media([lie], changed_after_ns=far_future) == []   # ...and trusted when ctime says not
    img.write_bytes(b"y" * 10)
    assert ID.stale_media([ref], changed_after_ns=os.stat(img).st_ctime_ns - 1) == [str(img)]


def test_verify_ref_bytes_catches_a_replaced_image():
    import pytest
    old, new = jpeg(64, 48, seed=1), jpeg(64, 48, seed=2)
    ref = {"uri": "x.jpg", "size": len(old), "sha256": ID.sha256_bytes(old)}
    assert ID.verify_ref_bytes(ref, old) == old
    with pytest.raises(ID.MediaChanged):
        ID.verify_ref_bytes(ref, new + b"\0" * (len(old) - len(new)) if len(new) < len(old) else new[:len(old)])
    with pytest.raises(ID.MediaChanged, match="bytes now"):
        ID.verify_ref_bytes(ref, old[:100])
