"""Remote sources on a real S3 API (issue 26, item 4): moto's S3 server on 127.0.0.1, read through
fsspec / s3fs with the credentials in the environment, as a user's bucket would be.

WebDataset tars and parquet on ``s3://`` go through ingest, token counting, packing and the shard
writer (which reads the image bytes back from the bucket); a replaced object is noticed by its ETag
on the next run; no credential reaches any output file, the log or an error; ``allowed_hosts``
still governs http image URLs in records read from the bucket.
"""
from __future__ import annotations

import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("moto", reason="moto[server] is in the test extra (make install)")
pytest.importorskip("s3fs", reason="s3fs is in the test and s3 extras (make install)")

from curate.media import images as I  # noqa: E402
from curate.base import records as R  # noqa: E402
from pipelines.recipe import parse  # noqa: E402
from pipelines.runner import run  # noqa: E402
from tests.corpus import caption_corpus, ingest_resumed, jpeg  # noqa: E402
from tests.test_hostile_inputs import image_server  # noqa: E402

KEY_ID = "AKIAMMCURATETESTKEY1"
SECRET = "mmcurate-test-secret-4f1e9d0c7b2a"   # grepped for in every output


def _forget_filesystems() -> None:
    """fsspec caches a filesystem per set of arguments, not per environment: a test's endpoint must
    not outlive it."""
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    I._filesystem.cache_clear()


@pytest.fixture
def bucket(monkeypatch, tmp_path):
    """An S3 API on 127.0.0.1 with one bucket, the credentials in the environment only."""
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    _forget_filesystems()
    import boto3
    client = boto3.client("s3")
    client.create_bucket(Bucket="corpus")
    try:
        yield client
    finally:
        _forget_filesystems()
        server.stop()


def upload(client, tmp_path, image_port: int | None = None) -> dict[str, bytes]:
    """Two webdataset tars, a parquet file (image bytes, a path below the bucket root, an http URL of a
    host no source allows, a path outside the root) and the image the path names; with `image_port`, a
    second parquet file whose two http images name the allowed host and another one (localhost)."""
    local = caption_corpus(tmp_path / "wds", n_files=2, per_file=6)
    objects = {f"wds/{p.name}": p.read_bytes() for p in sorted(local.glob("*.tar"))}
    objects["img/a.jpg"] = jpeg(120, 90, seed=7)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])   # the Hugging Face image column
    buf = io.BytesIO()
    pq.write_table(pa.table({
        "key": ["bytes", "path", "remote", "other-bucket"],
        "text": ["inline image bytes", "an image next to the table", "a url", "another bucket"],
        "image": pa.array([{"bytes": jpeg(100, 80, seed=8), "path": None}, {"bytes": None, "path": "img/a.jpg"},
                           {"bytes": None, "path": "http://localhost:9/x.jpg"},
                           {"bytes": None, "path": "s3://elsewhere/x.jpg"}], image)}), buf)
    objects["pq/part-0.parquet"] = buf.getvalue()
    if image_port is not None:
        buf = io.BytesIO()
        pq.write_table(pa.table({"key": ["fetched", "not-allowed"], "text": ["from the allowed host", "from another"],
                                 "image": pa.array([{"bytes": None, "path": f"http://127.0.0.1:{image_port}/a.jpg"},
                                                    {"bytes": None, "path": f"http://localhost:{image_port}/b.jpg"}],
                                                   image)}), buf)
        objects["pq/part-1.parquet"] = buf.getvalue()
    for key, body in objects.items():
        client.put_object(Bucket="corpus", Key=key, Body=body)
    return objects


def s3_recipe() -> object:
    return parse({"name": "s3", "seed": 5, "sources": [
        {"name": "wds", "path": "s3://corpus/wds/*.tar", "format": "webdataset"},
        {"name": "pq", "path": "s3://corpus/pq/*.parquet", "format": "parquet", "image_root": "s3://corpus",
         "allowed_hosts": ["127.0.0.1"]}],
        "stages": [{"name": "count_tokens"}, {"name": "pack", "settings": {"context_length": 1024}},
                   {"name": "shards", "settings": {"dp_size": 1, "micro_batches": 1}}]})


def leaks(out, *texts: str) -> list[str]:
    """Output files and texts holding the secret or the key id."""
    found = [str(p) for p in out.rglob("*") if p.is_file()
             and (SECRET.encode() in p.read_bytes() or KEY_ID.encode() in p.read_bytes())]
    return found + [t[:80] for t in texts if SECRET in t or KEY_ID in t]


@pytest.mark.parametrize("executor", ["inline", pytest.param("ray", marks=pytest.mark.slow)])
def test_webdataset_and_parquet_on_s3_run_to_shards_with_no_credential_in_any_output(bucket, tmp_path, capfd, caplog,
                                                                                      executor):
    """Under Ray the workers read the bucket with the credentials they inherit from the driver's environment."""
    out = tmp_path / "out"
    with image_server(jpeg(90, 60, seed=9)) as (port, hits):
        upload(bucket, tmp_path, image_port=port)
        with caplog.at_level(logging.INFO):   # (botocore's own DEBUG log prints request headers: never on by default)
            result = run(s3_recipe(), out=out, executor=executor, progress=True)
    assert set(hits) == {"/a.jpg"}, "only the allowed host may be fetched (by ingest, and again by the shard writer)"
    ingest = result.report["stages"][0]
    assert ingest["in"] == 12 + 4 + 2 and ingest["out"] == 12 + 2 + 1
    rejects = {r["key"]: r[R.REASON] for r in pq.read_table(out / "stages" / "00_ingest" / "rejects.parquet").to_pylist()}
    assert rejects == {"pq/remote": "image:remote_not_allowed", "pq/other-bucket": "image:outside_root",
                       "pq/not-allowed": "image:remote_not_allowed"}
    kept = result.kept(0, ["key", "images"]).to_pylist()
    uris = {r["key"]: r["images"][0]["uri"] for r in kept}
    assert uris["pq/path"] == "s3://corpus/img/a.jpg" and uris["wds/s00-0000"] == "s3://corpus/wds/part-00000.tar"
    shards = list((out / "shards").rglob("*.tar"))
    assert uris["pq/fetched"] == f"http://127.0.0.1:{port}/a.jpg"
    assert shards and result.report["stages"][-1]["out"] == 15   # the shard writer read every image back
    printed = capfd.readouterr()
    assert leaks(out, printed.out, printed.err, caplog.text) == []


def test_an_object_replaced_between_runs_is_noticed_by_its_etag(bucket, tmp_path):
    objects = upload(bucket, tmp_path)
    out = tmp_path / "out"
    first = run(s3_recipe(), out=out, executor="inline", progress=False)
    before = {r["key"]: r["text"] for r in first.kept(0, ["key", "text"]).to_pylist()}
    again = run(s3_recipe(), out=out, executor="inline", progress=False)
    assert ingest_resumed(again), "an unchanged bucket resumes"
    # Same size, other bytes: one caption changed in place (a size + mtime check could miss this).
    body = objects["wds/part-00001.tar"]
    at = body.index(b".txt") + 512 - body.index(b".txt") % 512     # the first caption's data block
    changed = body[:at] + bytes([body[at] ^ 0x20]) + body[at + 1:]
    assert len(changed) == len(body) and changed != body
    bucket.put_object(Bucket="corpus", Key="wds/part-00001.tar", Body=changed)
    third = run(s3_recipe(), out=out, executor="inline", progress=False)
    assert not ingest_resumed(third), "the replaced object must re-run ingest"
    texts = {r["key"]: r["text"] for r in third.kept(0, ["key", "text"]).to_pylist()}
    assert [k for k in texts if texts[k] != before[k]] == ["wds/s01-0000"]
    fresh = run(s3_recipe(), out=tmp_path / "fresh", executor="inline", progress=False)
    assert texts == {r["key"]: r["text"] for r in fresh.kept(0, ["key", "text"]).to_pylist()}
    identity = json.loads((out / "identity-cache.json").read_text()) if (out / "identity-cache.json").exists() else {}
    assert not any(SECRET in k for k in identity)


def test_a_missing_bucket_is_a_clear_error_without_the_credential(bucket, tmp_path):
    recipe = parse({"name": "s3", "seed": 5, "stages": [], "sources": [
        {"name": "wds", "path": "s3://no-such-bucket/wds/*.tar", "format": "webdataset"}]})
    with pytest.raises(Exception) as err:
        run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    assert "no-such-bucket" in str(err.value)
    assert SECRET not in str(err.value) and KEY_ID not in str(err.value)


def test_an_image_replaced_in_the_bucket_after_ingest_is_never_written_under_its_old_identity(bucket, tmp_path):
    """A referenced image (not a source file) is not re-fetched at resume; the shard writer reads it
    again and checks its sha256 against ingest's, so the changed bytes are refused with a reason."""
    image = upload(bucket, tmp_path)["img/a.jpg"]
    out = tmp_path / "out"
    run(s3_recipe(), out=out, executor="inline", progress=False, until="count_tokens")
    middle = len(image) // 2    # same size, one byte of the scan data changed
    bucket.put_object(Bucket="corpus", Key="img/a.jpg", Body=image[:middle] + bytes([image[middle] ^ 1]) + image[middle + 1:])
    result = run(s3_recipe(), out=out, executor="inline", progress=False)
    shards = result.report["stages"][-1]
    assert sum(shards["rejected"].values()) + sum(shards["quarantined"].values()) == 1
    rows = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["key"], r[R.REASON]) for r in rows if r["key"] == "pq/path"] == [("pq/path", "media_changed")]
