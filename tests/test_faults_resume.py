"""Faults between runs: an input changed under a complete run, a committed stage file damaged.

Either way the re-run must write what a fresh run on the same inputs writes, byte for byte (shards,
manifest, report, rejects), and must never read a damaged stage file as if it were the committed one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipelines import fingerprint as F
from pipelines.recipe import parse
from pipelines.runner import run
from tests.corpus import jpeg


def llava_corpus(root: Path, n: int = 6) -> Path:
    (root / "img").mkdir(parents=True)
    for i in range(n):
        (root / "img" / f"{i}.jpg").write_bytes(jpeg(96 + 8 * i, 80, seed=i))
    (root / "c.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": f"img/{i}.jpg", "conversations": [
        {"from": "human", "value": "<image>what is it?"}, {"from": "gpt", "value": "a picture " * (i + 1)}]}) + "\n"
        for i in range(n)))
    return root


def recipe_dict(src: Path) -> dict:
    return {"name": "faults", "seed": 5,
            "sources": [{"name": "c", "path": str(src / "c.jsonl"), "format": "llava"}],
            "stages": [{"name": "image_filter", "settings": {"preset": "lenient", "min_side": 50, "min_pixels": 0}},
                       {"name": "count_tokens"}, {"name": "pack", "settings": {"context_length": 4096}},
                       {"name": "shards", "settings": {"dp_size": 1, "micro_batches": 1}}]}


def recipe(src: Path):
    return parse(recipe_dict(src))


def outputs(out: Path) -> dict[str, str]:
    """sha256 of every file a user reads: the shards (manifest included), report.json, rejects."""
    files = [p for p in sorted((out / "shards").rglob("*")) if p.is_file()]
    files += [out / "report.json", out / "rejects.parquet"]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def resumed(out: Path) -> list[bool]:
    return [s["resumed"] for s in json.loads((out / "run.json").read_text())["stages"]]


def test_a_replaced_image_reruns_every_later_stage_and_equals_a_fresh_run(tmp_path):
    src = llava_corpus(tmp_path / "src")
    out = tmp_path / "out"
    run(recipe(src), out=out, executor="inline", progress=False)
    before = outputs(out)
    (src / "img" / "2.jpg").write_bytes(jpeg(40, 30, seed=9))   # now below min_side: image_filter rejects it
    run(recipe(src), out=out, executor="inline", progress=False)
    assert resumed(out) == [False] * 5, "every stage after a re-run ingest must re-run"
    run(recipe(src), out=tmp_path / "fresh", executor="inline", progress=False)
    assert outputs(out) == outputs(tmp_path / "fresh")
    assert outputs(out) != before
    # and a third run on unchanged inputs resumes everything
    run(recipe(src), out=out, executor="inline", progress=False)
    assert resumed(out) == [True] * 5


def test_a_re_run_upstream_that_writes_the_same_bytes_keeps_what_follows(tmp_path):
    """The digest is of content, not of the run: ingest re-run (its marker lost) to the same bytes
    keeps every stage after it."""
    src = llava_corpus(tmp_path / "src")
    out = tmp_path / "out"
    run(recipe(src), out=out, executor="inline", progress=False)
    (out / "stages" / "00_ingest" / "_COMPLETE.json").unlink()
    run(recipe(src), out=out, executor="inline", progress=False)
    assert resumed(out) == [False, True, True, True, True]
    marker = json.loads((out / "stages" / "01_image_filter" / "_COMPLETE.json").read_text())
    ingest = json.loads((out / "stages" / "00_ingest" / "_COMPLETE.json").read_text())
    assert marker["input_digest"] == ingest["digest"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    st = os.stat(path)
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:   # one byte flipped in the middle, same size, and the old mtime put back
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("victim, how, first_rerun", [
    ("stages/02_count_tokens/data", "flipped", 1),     # image_filter is fused into count_tokens: the chain re-runs
    ("stages/02_count_tokens/data", "truncated", 1),
    ("stages/00_ingest/data", "flipped", 0),
    ("shards", "flipped", 4),
])
def test_a_damaged_committed_file_is_rebuilt_not_read(tmp_path, victim, how, first_rerun):
    src = llava_corpus(tmp_path / "src")
    out = tmp_path / "out"
    run(recipe(src), out=out, executor="inline", progress=False)
    clean = outputs(out)
    target = sorted(p for p in (out / victim).rglob("*") if p.suffix in (".parquet", ".tar"))[0]
    _damage(target, how)
    run(recipe(src), out=out, executor="inline", progress=False)
    # the damaged stage re-runs; its re-run writes the committed bytes again, so later stages stay
    assert resumed(out)[first_rerun] is False
    assert all(resumed(out)[:first_rerun])
    assert outputs(out) == clean


def test_a_damaged_marker_means_the_stage_re_runs(tmp_path):
    src = llava_corpus(tmp_path / "src")
    out = tmp_path / "out"
    run(recipe(src), out=out, executor="inline", progress=False)
    clean = outputs(out)
    marker = out / "stages" / "03_pack" / "_COMPLETE.json"
    marker.write_bytes(marker.read_bytes()[:40])
    run(recipe(src), out=out, executor="inline", progress=False)
    assert resumed(out) == [True, True, True, False, True]
    assert outputs(out) == clean


def test_resume_rehashes_nothing_that_was_not_touched(tmp_path, monkeypatch):
    """The check at resume is a stat per file; a file is read again only when its stat changed."""
    src = llava_corpus(tmp_path / "src")
    out = tmp_path / "out"
    run(recipe(src), out=out, executor="inline", progress=False)
    hashed: list[str] = []
    real = F.file_sha256
    monkeypatch.setattr(F, "file_sha256", lambda p, *a: hashed.append(str(p)) or real(p, *a))
    run(recipe(src), out=out, executor="inline", progress=False)
    assert resumed(out) == [True] * 5 and hashed == []
    touched = next((out / "stages" / "03_pack" / "data").glob("*.parquet"))
    os.utime(touched)     # stat changed, bytes did not: re-hashed once, and still complete
    run(recipe(src), out=out, executor="inline", progress=False)
    assert resumed(out) == [True] * 5 and hashed == [str(touched)]


def test_a_replaced_referenced_video_re_runs_ingest_and_what_follows(tmp_path):
    pytest.importorskip("av")
    from demo_data.videos import encode_video, sample_clip
    import numpy as np
    src = tmp_path / "src"
    src.mkdir()
    (src / "v.mp4").write_bytes(sample_clip("clip-bars"))
    (src / "c.jsonl").write_text(json.dumps({"id": "v", "video": "v.mp4", "conversations": [
        {"from": "human", "value": "<video>what moves?"}, {"from": "gpt", "value": "a bar"}]}) + "\n")
    r = parse({"name": "v", "seed": 1, "sources": [{"name": "c", "path": str(src / "c.jsonl"), "format": "llava"}],
               "stages": [{"name": "count_tokens"}]})
    out = tmp_path / "out"
    run(r, out=out, executor="inline", progress=False)
    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(6)]
    (src / "v.mp4").write_bytes(encode_video(frames, "mp4", "mpeg4"))
    again = run(r, out=out, executor="inline", progress=False)
    assert resumed(out) == [False, False]
    ref = again.kept(columns=["videos"]).to_pylist()[0]["videos"][0]
    assert (ref["width"], ref["height"]) == (64, 48)


def test_a_changed_model_profile_re_runs_what_reads_it_and_equals_a_fresh_run(tmp_path):
    """`model:` is no stage setting, yet count_tokens and shards read it: a changed profile re-runs
    them (and what follows), never resumes the counts or shards of the old one."""
    src = llava_corpus(tmp_path / "src")
    out = tmp_path / "out"
    run(recipe(src), out=out, executor="inline", progress=False)
    before = outputs(out)
    plain = parse({**recipe_dict(src), "model": {"template": "plain"}})   # other text tokens, other ids
    run(plain, out=out, executor="inline", progress=False)
    assert resumed(out)[0] and not any(resumed(out)[2:])
    fresh = tmp_path / "fresh"
    run(plain, out=fresh, executor="inline", progress=False)
    assert outputs(out) == outputs(fresh) != before
