"""embed: the offline backends on real shipped weights (EfficientNet-Lite0 penultimate features on demo
photos, MiniLM on captions), bad images turned into named drops, the CLIP/SigLIP path on tiny random
models built from configs (the same vectors clip_score uses), and the demo photos through the runner:
embed -> cluster -> cluster_sample -> semantic_dedup, every row accounted for, resumable, re-computed
byte for byte."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from curate.base import records as R
from curate import base as S
from curate.cluster import columns as C
from demo_data import sample as sample_data
from pipelines.recipe import parse
from pipelines.runner import run
from tests.test_clip_scoring import tiny_random_clip_dir, tiny_random_siglip_dir  # noqa: F401  (fixtures)

PHOTOS = {"chelsea": skdata.chelsea(), "coffee": skdata.coffee(), "rocket": skdata.rocket(),
          "astronaut": skdata.astronaut()}


def write_jpeg(path: Path, arr: np.ndarray, scale: float = 1.0) -> dict:
    im = Image.fromarray(arr).convert("RGB")
    if scale != 1.0:
        im = im.resize((int(im.width * scale), int(im.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    path.write_bytes(buf.getvalue())
    return R.image_ref(str(path), size=len(buf.getvalue()), width=im.width, height=im.height, format="JPEG")


@pytest.fixture(scope="module")
def photo_table(tmp_path_factory) -> pa.Table:
    """chelsea, coffee, rocket, astronaut, a half-size chelsea, a corrupt file, a missing file, a text row."""
    tmp = tmp_path_factory.mktemp("photos")
    rows = []
    for name, arr in PHOTOS.items():
        rows.append((name, [write_jpeg(tmp / f"{name}.jpg", arr)], f"a photo of {name}"))
    rows.append(("chelsea-small", [write_jpeg(tmp / "small.jpg", PHOTOS["chelsea"], 0.5)], "a small cat photo"))
    (tmp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows.append(("corrupt", [R.image_ref(str(tmp / "corrupt.jpg"), size=20, width=10, height=10, format="JPEG")], "x"))
    rows.append(("missing", [R.image_ref(str(tmp / "gone.jpg"), size=20, width=10, height=10, format="JPEG")], "x"))
    rows.append(("text-only", [], "a lesson about fractions"))
    out = []
    for i, (key, images, text) in enumerate(rows):
        row = R.Sample(key=key, source="t", category="caption", text=text, ordinal=i).to_row()
        row["images"] = images
        out.append(row)
    return R.rows_to_table(out)


@pytest.fixture(scope="module")
def image_result(photo_table):
    return S.build("embed", {"modality": "image", "batch_size": 3, "decode_threads": 2}).run(photo_table)


def vectors(result) -> dict[str, np.ndarray]:
    emb = result.kept.column(C.EMBEDDING)
    return {k: np.asarray(v, dtype=np.float32) for k, v in zip(result.kept.column("key").to_pylist(), emb.to_pylist())
            if v is not None}


def test_offline_image_embeddings_are_unit_lite0_penultimate_features(image_result):
    emb = image_result.kept.column(C.EMBEDDING)
    assert emb.type == pa.list_(pa.float16(), 1280)
    v = vectors(image_result)
    assert set(v) == {"chelsea", "coffee", "rocket", "astronaut", "chelsea-small"}
    for vec in v.values():
        assert abs(np.linalg.norm(vec) - 1.0) < 2e-3
    same = float(v["chelsea"] @ v["chelsea-small"])
    others = [float(v["chelsea"] @ v[k]) for k in ("coffee", "rocket", "astronaut")]
    assert same > 0.9 and same > max(others) + 0.1


def test_penultimate_features_are_what_the_classifier_head_reads(photo_table):
    from curate.embed.backends import Lite0ImageEmbedder
    from curate.media.decode import decode_rgb
    from curate.media.images import read_image_bytes
    emb = Lite0ImageEmbedder()
    ref = photo_table.column("images")[0].as_py()[0]
    x = emb.transform.normalize(torch.from_numpy(emb.prepare_image(decode_rgb(read_image_bytes(ref))))[None], torch.float32)
    with torch.inference_mode():
        assert torch.allclose(emb.model._fc(emb.forward(x)), emb.model(x), atol=1e-4)


def test_bad_images_are_named_drops_and_text_rows_pass(image_result):
    dropped = dict(zip(image_result.dropped.column("key").to_pylist(),
                       zip(image_result.dropped.column(R.STATUS).to_pylist(),
                           image_result.dropped.column(R.REASON).to_pylist())))
    assert dropped["corrupt"] == (R.REJECTED, "image:corrupt")
    assert dropped["missing"] == (R.QUARANTINED, "image:unreadable:missing_file")
    text_row = image_result.kept.filter(pc.equal(image_result.kept.column("key"), "text-only"))
    assert text_row.num_rows == 1 and text_row.column(C.EMBEDDING).null_count == 1


def test_image_embeddings_repeat_exactly_and_agree_across_batch_sizes(photo_table, image_result):
    again = S.build("embed", {"modality": "image", "batch_size": 3, "decode_threads": 2}).run(photo_table)
    assert again.kept.column(C.EMBEDDING).equals(image_result.kept.column(C.EMBEDDING))
    other = vectors(S.build("embed", {"modality": "image", "batch_size": 8, "store_dtype": "float32"}).run(photo_table))
    for key, vec in vectors(image_result).items():
        assert np.allclose(vec, other[key], atol=2e-3)   # float16 column vs float32: rounding only


def test_offline_text_embeddings_put_paraphrases_close(photo_table):
    rows = [R.Sample(key=f"k{i}", source="t", category="caption", text=t, ordinal=i).to_row() for i, t in enumerate(
        ["A tabby cat lying on a sofa.", "A striped cat resting on a couch.", "Stock prices fell sharply today.", None])]
    res = S.build("embed", {"modality": "text"}).run(R.rows_to_table(rows))
    assert res.kept.column(C.EMBEDDING).type == pa.list_(pa.float16(), 384)
    v = vectors(res)
    assert set(v) == {"k0", "k1", "k2"}                 # k3 has no text: null, kept
    assert float(v["k0"] @ v["k1"]) > float(v["k0"] @ v["k2"]) + 0.3


def test_hf_clip_and_siglip_embeddings_are_the_scorers_vectors(photo_table, tiny_random_clip_dir, tiny_random_siglip_dir):
    from curate.scoring.clip_hf import HFClipScorer
    table = photo_table.slice(0, 4)
    for backend, path, kind, dims in (("hf_clip", tiny_random_clip_dir, "clip", (16, 16)),
                                      ("hf_siglip", tiny_random_siglip_dir, "siglip", (32, 32))):
        img = S.build("embed", {"modality": "image", "backend": backend, "model_path": str(path),
                                "store_dtype": "float32", "device": "cpu"})
        txt = S.build("embed", {"modality": "text", "backend": backend, "model_path": str(path), "device": "cpu"})
        assert (img.dim, txt.dim) == dims
        got = vectors(img.run(table))
        scorer = HFClipScorer(path, kind)
        from curate.media.decode import decode_rgb
        from curate.media.images import read_image_bytes
        ref = table.column("images")[1].as_py()[0]
        want = scorer.encode_images([scorer.prepare_image(decode_rgb(read_image_bytes(ref), scorer.transform))])
        assert np.allclose(got["coffee"], want.embeddings[0].numpy(), atol=1e-5)
        assert txt.run(table).kept.column(C.EMBEDDING).null_count == 0


def _open_clip_ok() -> bool:
    from curate.scoring.clip_openclip import available
    return available()[0]


@pytest.mark.skipif(not _open_clip_ok(), reason="open_clip does not import here (needs torchvision): "
                    "`make test-extras` runs this in .extras-venv")
def test_open_clip_embeddings_are_the_models_own_vectors(photo_table, tmp_path):
    """embed's open_clip backend on a tiny model built from a config (no weights): its image and
    text vectors are the model's own normalised encode_image / encode_text."""
    import open_clip
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "mmcurate-tiny-embed.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "mmcurate-tiny-embed.json")
    torch.manual_seed(0)
    model = open_clip.create_model("mmcurate-tiny-embed", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    model.eval()
    _, _, preprocess = open_clip.create_model_and_transforms("mmcurate-tiny-embed", pretrained=None)
    settings = {"backend": "open_clip", "model_name": "mmcurate-tiny-embed", "model_path": str(tmp_path / "tiny.pt"),
                "dim": 16, "store_dtype": "float32", "device": "cpu"}
    table = photo_table.slice(0, 4)
    images = vectors(S.build("embed", {**settings, "modality": "image"}).run(table))
    texts = vectors(S.build("embed", {**settings, "modality": "text"}).run(table))
    assert set(images) == set(texts) == set(PHOTOS)
    tokenizer = open_clip.get_tokenizer("mmcurate-tiny-embed")
    from curate.media.images import read_image_bytes
    from curate.media.decode import decode_rgb
    from curate.scoring.clip_openclip import OpenClipScorer
    # the pixels the stage feeds: a JPEG decoded at the smallest DCT scale covering the model input
    draft_to = OpenClipScorer("mmcurate-tiny-embed", tmp_path / "tiny.pt", "cpu").transform
    with torch.no_grad():
        for name in PHOTOS:
            ref = table.filter(pc.equal(table.column("key"), name)).column("images")[0].as_py()[0]
            pixels = decode_rgb(read_image_bytes(ref), draft_to)
            want_image = model.encode_image(preprocess(pixels)[None], normalize=True)
            want_text = model.encode_text(tokenizer([f"a photo of {name}"]), normalize=True)
            np.testing.assert_allclose(images[name], want_image[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(texts[name], want_text[0].numpy(), atol=1e-5)
            # and their cosine is clip_score's open_clip score for the pair
            assert abs(float(images[name] @ texts[name]) - float((want_image * want_text).sum())) < 1e-5


def test_open_clip_needs_a_model_name_and_reports_why_it_cannot_load():
    from curate.scoring.clip_openclip import available
    with pytest.raises(ValueError, match="model_name"):
        S.build("embed", {"backend": "open_clip", "model_path": "/x.pt", "dim": 512})
    with pytest.raises(ValueError, match="dim"):
        S.build("embed", {"backend": "open_clip", "model_path": "/x.pt", "model_name": "ViT-B-32"})
    ok, why = available()
    if ok:
        pytest.skip("open_clip imports here; its loading path is exercised by the clip_score tests")
    stage = S.build("embed", {"backend": "open_clip", "model_path": "/x.pt", "model_name": "ViT-B-32", "dim": 512,
                              "device": "cpu"})
    with pytest.raises(RuntimeError, match="open_clip"):
        stage.setup()


def test_demo_photos_through_the_runner_resume_and_recompute_identically(tmp_path):
    sample_data.build(tmp_path / "data")
    recipe = parse({"name": "cluster-test", "seed": 7,
                    "sources": [{"name": "photos", "path": str(tmp_path / "data" / "photos" / "*.tar"),
                                 "format": "webdataset", "category": "caption"}],
                    "stages": [{"name": "embed", "settings": {"modality": "image", "batch_size": 32}},
                               {"name": "cluster", "settings": {"levels": [6, 2], "niter": 10}},
                               {"name": "cluster_sample", "settings": {"fraction": 0.5}},
                               {"name": "semantic_dedup", "settings": {"eps": 0.02}}],
                    "output": {"dir": str(tmp_path / "out")}})
    first = run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    for e in first.report["stages"]:
        assert e["in"] == e["out"] + sum(e["rejected"].values()) + sum(e["quarantined"].values()), e["name"]
    names = [e["name"] for e in first.report["stages"]]
    sample = first.report["stages"][names.index("cluster_sample")]["cluster_sample"]
    assert sample["kept_units"] == sample["target"] == round(0.5 * sample["available"])
    dedup = first.report["stages"][names.index("semantic_dedup")]["semantic_dedup"]
    assert dedup["removed"] >= 1                     # the sample photos hold re-encoded copies
    stage_dir = first.stage_dirs[names.index("cluster_sample")]
    before = {p.name: p.read_bytes() for p in sorted((stage_dir / "data").glob("*.parquet"))}
    assert before                                    # cluster_sample owns its rows (it ends a chain)
    marker = json.loads((stage_dir / "_COMPLETE.json").read_text())
    (stage_dir / "_COMPLETE.json").unlink()          # as if killed before the marker: recomputed on resume
    second = run(recipe, out=tmp_path / "out", executor="inline", progress=False)
    after = {p.name: p.read_bytes() for p in sorted((stage_dir / "data").glob("*.parquet"))}
    assert after == before
    assert json.loads((stage_dir / "_COMPLETE.json").read_text())["fingerprint"] == marker["fingerprint"]
    assert [e["out"] for e in second.report["stages"]] == [e["out"] for e in first.report["stages"]]
    assert second.kept().num_rows == first.report["stages"][-1]["out"]
