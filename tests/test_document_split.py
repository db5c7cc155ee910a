"""``pack`` with ``overlong: split`` (#25 item 7): a document longer than the context becomes chunks
cut at segment boundaries that each fit, in order, losing nothing; each chunk a sample with
``doc_key`` / ``chunk_index`` whose length is exactly the trainer's input_ids."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.base import records as R
from curate.documents import record as D
from pack import tokens as T
from pack.packing import chunks as C, split as S
from pack.packing.stage import PackStage
from pack.tokens.stage import CountTokensStage

TOK = T.load_tokenizer()
COUNTER = S.ChunkCounter(TOK, T.Template())
MARGIN = 16


def _img(i: int, w: int, h: int) -> dict:
    return R.image_ref(uri=f"/docs/{i}.jpg", width=w, height=h, format="JPEG")


WORDS = st.sampled_from(["the", "harbour", "boats", "数字", "😀", "3.14", "—", "a,b", "\n", "  ", "x" * 40, "Q?"])
PARAGRAPH = st.tuples(st.lists(WORDS, min_size=1, max_size=20), st.integers(1, 80)).map(lambda t: " ".join(t[0] * t[1]))
PART = st.one_of(PARAGRAPH, st.one_of(st.integers(1, 64), st.integers(1, 1500)).map(lambda t: ("image", t)))


def _covered(text: str, segments: list[dict], chunks: list[S.Chunk]) -> None:
    """The chunks, read in order, are the document: every paragraph's characters once, in order, and
    every image once, in order; image positions kept."""
    want = list(D.document_parts(text, segments))
    got_images = [s["image"] for ch in chunks for s in ch.segments if s["kind"] == "image"]
    assert got_images == [v for k, v in want if k == "image"]
    assert [s["position"] for ch in chunks for s in ch.segments if s["kind"] == "image"] == \
        [s["position"] for s in segments if s["kind"] == "image"]
    ranges = [(s["start"], s["end"]) for ch in chunks for s in ch.segments if s["kind"] == "text"]
    assert all(a < b for a, b in ranges) and all(b0 <= a1 for (_, b0), (a1, _) in zip(ranges, ranges[1:]))
    covered = "".join(text[a:b] for a, b in ranges)
    assert covered == "".join(v for k, v in want if k == "text")


def _cut_paragraphs(segments: list[dict], chunks: list[S.Chunk]) -> list[dict]:
    """The document's text segments that some chunk holds only part of."""
    whole = {(s["start"], s["end"]) for ch in chunks for s in ch.segments if s["kind"] == "text"}
    return [s for s in segments if s["kind"] == "text" and (s["start"], s["end"]) not in whole]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(parts=st.lists(PART, min_size=1, max_size=12), slack=st.one_of(st.integers(0, 200), st.integers(0, 3000)))
def test_any_document_any_context_chunks_fit_in_order_and_nothing_is_lost(parts, slack):
    images = [p for p in parts if isinstance(p, tuple)]
    doc = D.build_document([_img(i, 56, 56) if isinstance(p, tuple) else p for i, p in enumerate(parts)])
    if not doc["segments"]:
        return
    tokens = [t for _, t in images]
    largest = max(tokens, default=0) + 2
    L = largest + COUNTER.overhead() + MARGIN + slack
    chunks = S.split_document(doc["text"], doc["segments"], tokens, L, COUNTER)
    assert chunks
    _covered(doc["text"], doc["segments"], chunks)
    for ch in chunks:
        view_text, view_segs, picked = S.chunk_view(doc["text"], ch.segments)
        ids = T.sample_input_ids({"text": view_text, "segments": view_segs}, TOK, [tokens[i] for i in picked])
        assert len(ids) == ch.num_tokens <= L
    whole = len(T.sample_input_ids(doc, TOK, tokens))
    if whole <= L:
        assert len(chunks) == 1
    for para in _cut_paragraphs(doc["segments"], chunks):     # cut only where a paragraph alone does not fit
        assert COUNTER.length(doc["text"], [para], tokens) > L


def test_cuts_fall_between_segments_unless_a_paragraph_alone_does_not_fit():
    paras = [" ".join(["word"] * n) for n in (300, 200, 900, 100)]
    doc = D.build_document([paras[0], _img(0, 280, 280), paras[1], paras[2], _img(1, 56, 56), paras[3]])
    L = 512
    chunks = S.split_document(doc["text"], doc["segments"], [100, 4], L, COUNTER)
    text_segs = [s for s in doc["segments"] if s["kind"] == "text"]
    inside = [(s["start"], s["end"]) for ch in chunks for s in ch.segments if s["kind"] == "text"
              if (s["start"], s["end"]) not in {(t["start"], t["end"]) for t in text_segs}]
    # only the 900-word paragraph (alone > 512 tokens) is cut; the others travel whole
    big = text_segs[2]
    assert inside and all(big["start"] <= a and b <= big["end"] for a, b in inside)
    assert all(ch.num_tokens <= L for ch in chunks)


def test_a_paragraph_too_long_for_any_chunk_fills_the_chunks_it_is_cut_into():
    words = ["harbour", "boats", "light", "数字", "3.14", "😀"]
    para = " ".join(words[i % len(words)] for i in range(3000))
    doc = D.build_document(["Short intro.", para, _img(0, 56, 56), "Short outro."])
    L = 1024
    chunks = S.split_document(doc["text"], doc["segments"], [4], L, COUNTER)
    assert all(ch.num_tokens <= L for ch in chunks)
    assert all(ch.num_tokens >= L - 2 * S.CUT_MARGIN - 8 for ch in chunks[:-1]), [c.num_tokens for c in chunks]
    _covered(doc["text"], doc["segments"], chunks)


def test_an_image_that_alone_does_not_fit_makes_the_document_unsplittable():
    doc = D.build_document(["intro", _img(0, 56, 56), "outro"])
    with pytest.raises(S.Unsplittable):
        S.split_document(doc["text"], doc["segments"], [600], 512, COUNTER)


def test_chunk_keys_and_ordinals_are_stable():
    assert C.chunk_key("obelics/7", 0) == "obelics/7" and C.chunk_key("obelics/7", 2) == "obelics/7#c2"
    assert C.chunk_ordinal(7, 1) == C.chunk_ordinal(7, 1) < 0
    assert len({C.chunk_ordinal(o, c) for o in range(50) for c in range(1, 6)}) == 250


# --- the pack stage --------------------------------------------------------------------------------

def _documents() -> pa.Table:
    long_doc = ["Chapter one. " + "The boats came in at dawn. " * 120, _img(0, 640, 480),
                "Chapter two. " + "Nets were mended on the quay. " * 150, _img(1, 320, 240), _img(2, 200, 200),
                "Epilogue. " + "The harbour slept. " * 60]
    rows = [
        {"key": "doc/long", **D.build_document(long_doc)},
        {"key": "doc/short", **D.build_document(["A short page.", _img(3, 100, 100), "The end."])},
        {"key": "doc/huge_image", **D.build_document(["text " * 600, _img(4, 1400, 1400), "more"])},
        {"key": "cap/long", "text": "a caption " * 700, "images": [_img(5, 64, 64)]},
    ]
    for n, r in enumerate(rows):
        r.update(source=r["key"].split("/")[0], category="interleaved" if "segments" in r else "caption",
                 **{R.ORDINAL: n, R.STATUS: R.KEPT})
    return R.rows_to_table(rows)


def test_pack_split_makes_chunks_that_are_samples_with_exact_lengths():
    counted = CountTokensStage().run(_documents())
    assert counted.kept.num_rows == 4
    lengths = dict(zip(counted.kept.column("key").to_pylist(), counted.kept.column("num_tokens").to_pylist()))
    L = 1024
    assert lengths["doc/long"] > 2 * L and lengths["doc/short"] < L
    stage = PackStage(context_length=L, overlong="split", algorithm="ffd")
    res = stage.run(counted.kept)
    kept, dropped = res.kept, res.dropped
    # accounting: in + chunks beyond the first = kept + rejected (the runner's "repeated")
    split = res.report["packing"]["split"]
    assert split["documents"] == 1 and split["chunks"] >= 3
    assert kept.num_rows + dropped.num_rows == counted.kept.num_rows + split["chunks"] - split["documents"]
    assert dict(zip(dropped.column("key").to_pylist(), dropped.column(R.REASON).to_pylist())) == {
        "doc/huge_image": "overlong_images", "cap/long": "overlong"}
    chunks = kept.filter(pc.equal(kept.column("doc_key"), "doc/long")).sort_by("chunk_index")
    assert chunks.column("key").to_pylist() == ["doc/long"] + [f"doc/long#c{i}" for i in range(1, chunks.num_rows)]
    assert chunks.column("chunk_index").to_pylist() == list(range(chunks.num_rows))
    short = kept.filter(pc.equal(kept.column("key"), "doc/short"))
    assert short.column("doc_key").to_pylist() == [None] and short.column("chunk_segments").to_pylist() == [None]
    # materialised, each chunk is an ordinary document whose input_ids have exactly num_tokens ids
    views = C.materialize_chunks(chunks)
    images = []
    for row in views.to_pylist():
        ids = T.sample_input_ids(row, TOK, row["image_tokens"])
        assert len(ids) == row["num_tokens"] <= L
        assert row["text_tokens"] == row["num_tokens"] - sum(row["image_tokens"])
        images += [s["position"] for s in row["segments"] if s["kind"] == "image"]
        assert len(row["images"]) == len(row["image_tokens"]) == sum(s["kind"] == "image" for s in row["segments"])
    assert images == [0, 1, 2]
    # chunks of one pack stay in document order
    for pid in set(chunks.column("pack_id").to_pylist()):
        sub = chunks.filter(pc.equal(chunks.column("pack_id"), pid))
        order = sorted(zip(sub.column("pack_position").to_pylist(), sub.column("chunk_index").to_pylist()))
        assert [c for _, c in order] == sorted(c for _, c in order)


def test_pack_split_is_deterministic_and_other_policies_are_unchanged():
    counted = CountTokensStage().run(_documents()).kept
    a = PackStage(context_length=1024, overlong="split").run(counted).kept
    b = PackStage(context_length=1024, overlong="split").run(counted.take(pa.array([3, 2, 1, 0]))).kept
    cols = ["key", R.ORDINAL, "num_tokens", "pack_id", "pack_position", "chunk_index"]
    assert a.select(cols).sort_by("key").equals(b.select(cols).sort_by("key"))
    rejected = PackStage(context_length=1024, overlong="reject").run(counted)
    assert rejected.kept.column("key").to_pylist() == ["doc/short"]
    assert rejected.kept.column("doc_key").to_pylist() == [None]


# --- through the runner ----------------------------------------------------------------------------

RECIPE = """
name: document-split
seed: 4
plugins: [tests.plugins.as_documents]
model: {{preset: qwen2-vl, max_pixels: 100352}}
sources:
  - {{name: web, path: "{data}/*.tar", format: webdataset, category: caption}}
stages:
  - {{name: as_documents}}
  - {{name: count_tokens}}
  - {{name: pack, settings: {{context_length: 1024, overlong: split}}}}
  - {{name: shards, settings: {{dp_size: 2, micro_batches: 1, leftover: pad_with_repeats, input_ids: true}}}}
"""


def test_a_recipe_splits_documents_accounts_for_every_chunk_and_writes_the_same_bytes_on_ray(tmp_path):
    import hashlib
    import json

    from pack.shards.validate import validate_shards
    from pack.trainer.loader import PackedShards
    from pipelines.recipe import load
    from pipelines.runner import run
    from tests.corpus import caption_corpus

    data = caption_corpus(tmp_path / "data", n_files=2, per_file=10, seed=9)
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(data=data))
    outs = []
    for name, executor in (("inline", "inline"), ("ray", "ray")):   # chunk rows routed as repeats on Ray too
        run(load(tmp_path / "recipe.yaml"), out=tmp_path / name, executor=executor, progress=False)
        outs.append(tmp_path / name)
    report = json.loads((outs[0] / "report.json").read_text())
    pack = next(s for s in report["stages"] if s["name"] == "pack")
    split = pack["packing"]["split"]
    # chunks beyond each document's first are the runner's "repeated": in + repeated = out + dropped
    assert pack["repeated"] == split["chunks"] - split["documents"] > 0 and pack["balanced"]
    dropped = sum(pack["rejected"].values()) + sum(pack["quarantined"].values())
    assert pack["in"] + pack["repeated"] == pack["out"] + dropped
    assert validate_shards(str(outs[0] / "shards")) == []
    samples = [seg for r in range(2) for ds in [PackedShards(str(outs[0] / "shards"), rank=r, world_size=2)]
               for i in range(ds.num_packs) for seg in ds.read_pack(i)["samples"]]
    chunk_samples = [s for s in samples if s.get("doc_key") is not None]
    assert any(s["chunk_index"] > 0 and s["key"] == f"{s['doc_key']}#c{s['chunk_index']}" for s in chunk_samples)
    assert all(s["segments"] and s["length"] <= 1024 for s in samples)

    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    assert digest(outs[0] / "shards") == digest(outs[1] / "shards")
