"""clip_score: device choice, the transformers CLIP/SigLIP path (tiny random models built from configs
with a fixed seed: nothing downloaded), the open_clip path where it imports, the offline
label_text_similarity scorer on real photos, thresholds, top fraction per source and the report."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from curate.base import records as R
from curate import base as S
from curate.scoring import device as D
from curate.scoring import stages as ST
from curate.media.decode import decode_rgb
from curate.scoring.base import ImageTransform
from curate.scoring.clip_hf import HFClipScorer
from curate.scoring.clip_openclip import UNAVAILABLE_REASON
from curate.scoring.clip_openclip import available as open_clip_available

PHOTOS = {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee(),
          "rocket": skdata.rocket(), "camera": skdata.camera()}


# --- device ----------------------------------------------------------------------------------------
def test_device_prefers_cuda_then_npu_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.pick_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "npu_available", lambda: True)
    assert D.pick_device("auto") == "npu"
    monkeypatch.setattr(D, "npu_available", lambda: False)
    assert D.pick_device("auto") == "cpu"
    assert D.pick_device("cpu") == "cpu"


def test_device_refuses_what_is_not_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "npu_available", lambda: False)
    with pytest.raises(RuntimeError, match="cuda"):
        D.pick_device("cuda")
    with pytest.raises(RuntimeError, match="npu"):
        D.pick_device("npu:0")
    with pytest.raises(ValueError, match="device"):
        D.pick_device("tpu")


def test_npu_probe_is_false_without_torch_npu():
    assert D.npu_available() is False  # torch_npu is not installed here


def test_dtypes():
    assert D.resolve_dtype("auto", "cpu") == torch.float32
    assert D.resolve_dtype("auto", "cuda") == torch.float16
    assert D.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        D.resolve_dtype("int8", "cpu")


# --- tiny random models (configs + fixed seed) -----------------------------------------------------
WORDS = ("a an the of on in with photo cat dog cup coffee rocket man camera astronaut space suit flag "
         "tabby striped fur launch pad sky saucer bowl fruit table circuit board snow mountains").split()


def tiny_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=max_length), len(vocab)


@pytest.fixture(scope="module")
def tiny_random_clip_dir(tmp_path_factory) -> Path:
    """A 2-layer CLIP with random weights (seed 0), saved like a real checkpoint directory."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    out = tmp_path_factory.mktemp("tiny-random-clip")
    tokenizer, vocab_size = tiny_tokenizer(16)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=2, eos_token_id=3,
                         pad_token_id=0),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_random_siglip_dir(tmp_path_factory) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel
    out = tmp_path_factory.mktemp("tiny-random-siglip")
    tokenizer, vocab_size = tiny_tokenizer(16)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4))
    torch.manual_seed(0)
    SiglipModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def file_ref(tmp: Path, name: str, payload: bytes) -> dict:
    path = tmp / name
    path.write_bytes(payload)
    with Image.open(io.BytesIO(payload)) as im:
        return R.image_ref(str(path), size=len(payload), width=im.width, height=im.height, format=im.format)


def rows_table(rows: list[dict]) -> pa.Table:
    out = []
    for i, r in enumerate(rows):
        row = R.Sample(key=r["key"], source=r.get("source", "s"), category=r.get("category", "caption"),
                       text=r.get("text"), conversations=r.get("conversations"), ordinal=i).to_row()
        row["images"] = r.get("images", [])
        out.append(row)
    return R.rows_to_table(out)


# --- preprocessing --------------------------------------------------------------------------------------
def test_image_transform_equals_the_hf_processors(tiny_random_clip_dir, tiny_random_siglip_dir):
    from transformers import CLIPImageProcessor, SiglipImageProcessor
    im = Image.fromarray(skdata.chelsea())   # 451 x 300: exercises shortest-edge resize and crop
    for path, proc_cls in ((tiny_random_clip_dir, CLIPImageProcessor), (tiny_random_siglip_dir, SiglipImageProcessor)):
        proc = proc_cls.from_pretrained(path)
        tr = ImageTransform.from_hf_config(path)
        ref = proc(images=[im], return_tensors="pt")["pixel_values"]
        ours = tr.normalize(torch.from_numpy(tr.resize_crop(im))[None], torch.float32)
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-5)


def test_jpeg_draft_decode_keeps_the_model_resolution():
    tr = ImageTransform(shortest_edge=224, crop_size=(224, 224))
    big = np.asarray(Image.fromarray(skdata.astronaut()).resize((1600, 1200)))
    im = decode_rgb(jpeg_bytes(big), tr)
    assert min(im.size) >= 224 and im.size[0] < 1600          # DCT-scaled, still covers 224
    assert decode_rgb(jpeg_bytes(big), None).size == (1600, 1200)


# --- the transformers path -------------------------------------------------------------------------
def test_hf_clip_scores_equal_the_models_own_forward(tiny_random_clip_dir):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
    scorer = HFClipScorer(tiny_random_clip_dir, "clip", "cpu")
    texts = ["a tabby cat", "a cup of coffee on a saucer", "the rocket on the launch pad"]
    images = [Image.fromarray(PHOTOS[n]) for n in ("chelsea", "coffee", "rocket")]
    ours = scorer.score_pairs([scorer.prepare_image(im) for im in images], texts)
    model = CLIPModel.from_pretrained(tiny_random_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_random_clip_dir)(texts, padding=True, return_tensors="pt")
    pix = CLIPImageProcessor.from_pretrained(tiny_random_clip_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pix)
    expected = (out.image_embeds * out.text_embeds).sum(-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert scorer.name.startswith("hf_clip:")


def test_hf_siglip_scores_equal_the_models_own_forward(tiny_random_siglip_dir):
    from transformers import AutoTokenizer, SiglipImageProcessor, SiglipModel
    scorer = HFClipScorer(tiny_random_siglip_dir, "siglip", "cpu")
    texts = ["a tabby cat", "snow mountains"]
    images = [Image.fromarray(PHOTOS["chelsea"]), Image.fromarray(PHOTOS["astronaut"])]
    ours = scorer.score_pairs([scorer.prepare_image(im) for im in images], texts)
    model = SiglipModel.from_pretrained(tiny_random_siglip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_random_siglip_dir)(texts, padding="max_length", max_length=16,
                                                                 return_tensors="pt")
    pix = SiglipImageProcessor.from_pretrained(tiny_random_siglip_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], pixel_values=pix)
    expected = (out.image_embeds * out.text_embeds).sum(-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_missing_model_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        HFClipScorer(tmp_path / "nope", "clip", "cpu")


# --- the stage with the tiny random CLIP -----------------------------------------------------------
@pytest.fixture(scope="module")
def photo_refs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("photos")
    refs = {name: file_ref(tmp, f"{name}.jpg", jpeg_bytes(arr)) for name, arr in PHOTOS.items()}
    refs["chelsea_png"] = file_ref(tmp, "chelsea.png", png_bytes(PHOTOS["chelsea"]))
    refs["corrupt"] = file_ref(tmp, "corrupt.png", png_bytes(PHOTOS["coffee"]))
    damaged = bytearray(Path(refs["corrupt"]["uri"]).read_bytes())
    at = damaged.find(b"IDAT") + 100
    damaged[at:at + 64] = b"\x00" * 64
    Path(refs["corrupt"]["uri"]).write_bytes(bytes(damaged))
    refs["missing"] = dict(refs["coffee"], uri=str(tmp / "gone.jpg"))
    return refs


def clip_stage(path: Path, **settings) -> ST.ClipScore:
    return S.build("clip_score", {"backend": "hf_clip", "model_path": str(path), "device": "cpu", **settings})


def demo_rows(refs: dict) -> list[dict]:
    return [
        {"key": "cat", "images": [refs["chelsea"]], "text": "A tabby cat with striped fur"},
        {"key": "coffee", "images": [refs["coffee"]], "text": "A cup of coffee on a saucer"},
        {"key": "rocket", "images": [refs["rocket"]], "text": "A rocket on the launch pad", "source": "t"},
        {"key": "man", "images": [refs["camera"]], "text": "A man with a camera", "source": "t"},
        {"key": "two", "images": [refs["chelsea"], refs["coffee"]], "text": "A tabby cat with striped fur"},
        {"key": "vqa", "images": [refs["astronaut"]], "category": "vqa",
         "conversations": [{"role": "user", "content": "<image>\nWho is this?"},
                           {"role": "assistant", "content": "An astronaut in a space suit"}]},
        {"key": "text-only", "images": [], "text": "Water boils at one hundred degrees."},
        {"key": "no-text", "images": [refs["coffee"]], "text": None},
        {"key": "corrupt", "images": [refs["corrupt"]], "text": "A cup of coffee"},
        {"key": "missing", "images": [refs["missing"]], "text": "A cup of coffee"},
    ]


def test_stage_scores_every_row_it_can_and_accounts_for_the_rest(tiny_random_clip_dir, photo_refs):
    table = rows_table(demo_rows(photo_refs))
    stage = clip_stage(tiny_random_clip_dir, batch_size=2, decode_threads=2)
    assert stage.resources.kind == "actor" and stage.resources.gpus == 0 and stage.resources.concurrency == 1
    assert not stage.has_global_step()
    result = stage.run(table)
    assert result.num_rows == table.num_rows
    kept = dict(zip(result.kept.column("key").to_pylist(), result.kept.column("clip_score").to_pylist()))
    for key in ("cat", "coffee", "rocket", "man", "two", "vqa"):
        assert kept[key] is not None and -1.0 <= kept[key] <= 1.0
    assert kept["text-only"] is None and kept["no-text"] is None
    dropped = dict(zip(result.dropped.column("key").to_pylist(),
                       zip(result.dropped.column(R.STATUS).to_pylist(), result.dropped.column(R.REASON).to_pylist())))
    assert dropped == {"corrupt": (R.REJECTED, "image:corrupt"),
                       "missing": (R.QUARANTINED, "image:unreadable:missing_file")}


def test_multi_image_reduction_and_batching_do_not_change_scores(tiny_random_clip_dir, photo_refs):
    table = rows_table(demo_rows(photo_refs)[:5])
    one = clip_stage(tiny_random_clip_dir, batch_size=1, decode_threads=1).run(table).kept
    many = clip_stage(tiny_random_clip_dir, batch_size=64, decode_threads=4).run(table).kept
    a = dict(zip(one.column("key").to_pylist(), one.column("clip_score").to_pylist()))
    b = dict(zip(many.column("key").to_pylist(), many.column("clip_score").to_pylist()))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6)
    # "two" = chelsea + coffee with the cat caption: mean of the cat score and coffee-with-cat-caption score
    single = rows_table([{"key": "c", "images": [photo_refs["chelsea"]], "text": "A tabby cat with striped fur"},
                         {"key": "d", "images": [photo_refs["coffee"]], "text": "A tabby cat with striped fur"}])
    s = clip_stage(tiny_random_clip_dir).run(single).kept.column("clip_score").to_pylist()
    assert a["two"] == pytest.approx((s[0] + s[1]) / 2, abs=1e-6)
    mx = clip_stage(tiny_random_clip_dir, image_reduce="max").run(table).kept
    assert dict(zip(mx.column("key").to_pylist(), mx.column("clip_score").to_pylist()))["two"] == pytest.approx(max(s), abs=1e-6)


def test_documents_score_each_image_against_its_paragraph_and_lose_only_the_failing_ones(tiny_random_clip_dir,
                                                                                         photo_refs):
    """Each image of a document is scored against the paragraph before it (else after): the same cosine
    a caption sample of that image and paragraph gets; below threshold or unreadable, the image leaves
    the document (recorded), the document stays with the mean of the scores left."""
    from curate.documents.record import build_document
    cat, cup = "A tabby cat with striped fur", "A cup of coffee on a saucer"
    doc = build_document([photo_refs["chelsea"], cat, photo_refs["coffee"], cup, photo_refs["missing"],
                          photo_refs["rocket"]])
    row = {**R.Sample(key="doc", source="s", category="interleaved", ordinal=0).to_row(), **doc, "images_removed": []}
    singles = rows_table([{"key": "a", "images": [photo_refs["chelsea"]], "text": cat},
                          {"key": "b", "images": [photo_refs["coffee"]], "text": cat},
                          {"key": "c", "images": [photo_refs["rocket"]], "text": cup}])
    expect = clip_stage(tiny_random_clip_dir).run(singles).kept.column("clip_score").to_pylist()
    cut = sorted(expect)[1]   # between the lowest and the others: exactly one image falls below
    out = clip_stage(tiny_random_clip_dir, threshold=cut).run(R.rows_to_table([row]))
    assert out.dropped.num_rows == 0
    (kept,) = out.kept.to_pylist()
    removed = {r["position"]: r["reason"] for r in kept["images_removed"]}
    low = expect.index(min(expect))
    assert removed == {low if low < 2 else 3: "clip:below_threshold", 2: "image:unreadable:missing_file"}
    left = [v for i, v in enumerate(expect) if i != low]
    assert kept["clip_score"] == pytest.approx(sum(left) / len(left), abs=1e-6)
    assert len(kept["images"]) == 2 and kept["text"] == f"{cat}\n\n{cup}"


def test_threshold_boundary_is_inclusive(tiny_random_clip_dir, photo_refs):
    table = rows_table(demo_rows(photo_refs)[:4])
    scores = clip_stage(tiny_random_clip_dir).run(table).kept.column("clip_score").to_pylist()
    cut = sorted(scores)[1]                                   # exactly the second-lowest score
    result = clip_stage(tiny_random_clip_dir, threshold=cut).run(table)
    assert result.kept.num_rows == 3 and result.dropped.num_rows == 1
    assert result.dropped.column(R.REASON).to_pylist() == ["clip:below_threshold"]
    assert result.dropped.column("clip_score").to_pylist()[0] == min(scores)   # rejects keep their score


def test_categories_limit_what_is_scored(tiny_random_clip_dir, photo_refs):
    table = rows_table(demo_rows(photo_refs)[:6])
    result = clip_stage(tiny_random_clip_dir, categories=["vqa"], threshold=1.0).run(table)
    kept = dict(zip(result.kept.column("key").to_pylist(), result.kept.column("clip_score").to_pylist()))
    assert set(kept) == {"cat", "coffee", "rocket", "man", "two"} and all(v is None for v in kept.values())
    assert result.dropped.column("key").to_pylist() == ["vqa"]


def test_top_fraction_per_source_through_the_stage(tiny_random_clip_dir, photo_refs):
    table = rows_table(demo_rows(photo_refs)[:7])   # source s: cat, coffee, two, vqa, text-only; t: rocket, man
    stage = clip_stage(tiny_random_clip_dir, top_fraction=0.5)
    assert stage.has_global_step()
    result = stage.run(table)
    assert result.num_rows == 7
    scores = dict(zip(result.kept.column("key").to_pylist() + result.dropped.column("key").to_pylist(),
                      result.kept.column("clip_score").to_pylist() + result.dropped.column("clip_score").to_pylist()))
    kept = set(result.kept.column("key").to_pylist())
    s_scored = sorted(["cat", "coffee", "two", "vqa"], key=lambda k: -scores[k])
    t_scored = sorted(["rocket", "man"], key=lambda k: -scores[k])
    assert kept == set(s_scored[:2]) | set(t_scored[:1]) | {"text-only"}
    assert set(result.dropped.column(R.REASON).to_pylist()) == {"clip:below_top_fraction"}
    info = result.report["clip_score_top_fraction"]["sources"]
    assert info["s"]["scored"] == 4 and info["s"]["kept"] == 2 and info["t"]["kept"] == 1
    assert info["s"]["cutoff"] == pytest.approx(scores[s_scored[1]], abs=1e-6)


def test_keep_top_fraction_ties_rounding_and_unscored():
    scores = np.array([0.5, 0.5, 0.9, np.nan, 0.1, 0.5, 0.2, 0.3, 0.4, 0.6, 0.7], dtype=np.float64)
    ords = np.array([5, 3, 9, 1, 2, 4, 6, 7, 8, 10, 11])
    keep, cutoff = ST.keep_top_fraction(scores, ords, 0.3)   # 10 scored: 0.3 * 10 keeps exactly 3
    assert keep.sum() == 4 and keep[3]                         # + the unscored row
    assert set(np.flatnonzero(keep)) == {2, 10, 9, 3} and cutoff == 0.6
    keep, cutoff = ST.keep_top_fraction(scores, ords, 0.5)     # 5 kept: 0.9 0.7 0.6 and two of the three 0.5s
    kept_halves = sorted(ords[i] for i in np.flatnonzero(keep) if scores[i] == 0.5)
    assert kept_halves == [3, 4] and cutoff == 0.5             # ties go to the lower _ordinal
    keep, cutoff = ST.keep_top_fraction(np.array([np.nan]), np.array([0]), 0.1)
    assert keep.tolist() == [True] and cutoff is None


def test_decide_and_summarize_need_no_model():
    stage = ST.ClipScore(backend="hf_clip", model_path="/unused", top_fraction=0.5, device="cpu")
    table = pa.table({"key": [f"k{i}" for i in range(6)], R.ORDINAL: pa.array(range(6), pa.int64()),
                      "source": ["a", "a", "a", "a", "b", "b"],
                      "clip_score": pa.array([0.1, 0.4, None, 0.3, 0.2, 0.25], pa.float32())})
    from curate.base.global_data import InlineData
    step = stage.global_step(InlineData([table.slice(0, 3), table.slice(3)]))
    out = step.decisions.gather()
    status = dict(zip(out.column(R.ORDINAL).to_pylist(), out.column(R.STATUS).to_pylist()))
    # source a: 3 scored, ceil(1.5) = 2 kept (0.4, 0.3), the unscored row passes; source b: 1 of 2 kept
    assert status == {0: R.REJECTED, 1: R.KEPT, 2: R.KEPT, 3: R.KEPT, 4: R.REJECTED, 5: R.KEPT}
    assert step.report["clip_score_top_fraction"]["sources"]["a"] == {"scored": 3, "kept": 2, "cutoff": pytest.approx(0.3)}
    summary = stage.summarize(table.filter(pa.array([s == R.KEPT for s in status.values()])).select(["source", "clip_score"]))
    entry = summary["clip_score"]
    a = entry["per_source"]["a"]
    assert (a["scored"], a["unscored"]) == (2, 1) and a["p50"] == pytest.approx(0.35, abs=1e-4)
    assert entry["per_source"]["b"]["p5"] == pytest.approx(0.25, abs=1e-4)
    assert entry["overall"]["scored"] == 3 and entry["overall"]["p50"] == pytest.approx(0.3, abs=1e-4)
    json.dumps(summary)   # report.json must be able to hold it


def test_sample_text_rules():
    conv = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."},
            {"role": "assistant", "content": "Second."}]
    assert ST.sample_text("  A caption  ", conv) == "A caption"
    assert ST.sample_text(None, conv) == "A cat."
    assert ST.sample_text("", conv, "first_exchange") == "What is it? A cat."
    assert ST.sample_text(None, [{"role": "user", "content": "hi"}]) is None
    assert ST.sample_text(None, None) is None


@pytest.mark.parametrize("settings,field", [
    ({"backend": "hf_clip"}, "model_path"),
    ({"backend": "open_clip", "model_path": "x.pt"}, "model_name"),
    ({"backend": "label_text_similarity", "model_path": "x"}, "model_path"),
    ({"backend": "hf_clip", "model_path": "x", "threshold": 1.5}, "threshold"),
    ({"backend": "hf_clip", "model_path": "x", "top_fraction": 0.0}, "top_fraction"),
    ({"backend": "hf_clip", "model_path": "x", "batch_size": 0}, "batch_size"),
    ({"backend": "hf_clip", "model_path": "x", "device": "tpu"}, "device"),
    ({"backend": "hf_clip", "model_path": "x", "image_reduce": "median"}, "image_reduce"),
    ({"backend": "clip", "model_path": "x"}, "backend"),
])
def test_config_errors_name_the_setting(settings, field):
    with pytest.raises(ValueError, match=field):
        S.build("clip_score", settings)


# --- open_clip --------------------------------------------------------------------------------------
OPEN_CLIP_OK, OPEN_CLIP_WHY = open_clip_available()


@pytest.mark.skipif(not OPEN_CLIP_OK, reason=UNAVAILABLE_REASON)
def test_open_clip_path_with_a_tiny_random_model(tmp_path, photo_refs):
    import open_clip
    from curate.scoring.clip_openclip import OpenClipScorer
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "mmcurate-tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "mmcurate-tiny-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("mmcurate-tiny-test", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    scorer = OpenClipScorer("mmcurate-tiny-test", tmp_path / "tiny.pt", "cpu")
    im = Image.fromarray(PHOTOS["chelsea"])
    got = scorer.score_pairs([scorer.prepare_image(im)], ["a tabby cat"])
    model.eval()
    with torch.no_grad():
        ie = model.encode_image(scorer.preprocess(im)[None], normalize=True)
        te = model.encode_text(open_clip.get_tokenizer("mmcurate-tiny-test")(["a tabby cat"]), normalize=True)
    np.testing.assert_allclose(got, (ie * te).sum(-1).numpy(), atol=1e-5)
    table = rows_table(demo_rows(photo_refs)[:3])
    result = S.build("clip_score", {"backend": "open_clip", "model_name": "mmcurate-tiny-test",
                                    "model_path": str(tmp_path / "tiny.pt"), "device": "cpu"}).run(table)
    assert result.kept.num_rows == 3 and None not in result.kept.column("clip_score").to_pylist()


def test_open_clip_unavailability_is_reported_not_hidden():
    if OPEN_CLIP_OK:
        pytest.skip("open_clip imports here")
    assert OPEN_CLIP_WHY.startswith(UNAVAILABLE_REASON)
    stage = S.build("clip_score", {"backend": "open_clip", "model_name": "ViT-B-32", "model_path": "x.pt",
                                   "device": "cpu"})
    with pytest.raises(RuntimeError, match="torchvision"):
        stage.setup()


# --- the offline scorer on real photos -------------------------------------------------------------
@pytest.fixture(scope="module")
def label_text_scorer():
    from curate.scoring.offline_scorer import LabelTextScorer
    return LabelTextScorer("cpu")


CAPTIONS = {
    "chelsea": "A tabby cat with striped orange fur looking to the side.",
    "coffee": "A cup of coffee with latte art on a saucer with a spoon.",
    "rocket": "A rocket on the launch pad with a service tower against the sky.",
    "camera": "A black and white photo of a man with a camera on a tripod.",
}
UNRELATED = ["A bowl of ripe fruit on a wooden kitchen table.", "A diagram of an electrical circuit board.",
             "Snow-covered mountains under a clear blue sky."]


def test_label_text_similarity_ranks_matching_captions_above_unrelated(label_text_scorer):
    s = label_text_scorer
    arrays = [s.prepare_image(Image.fromarray(PHOTOS[n])) for n in CAPTIONS]
    img = s.encode_images(arrays)
    txt = s.encode_texts(list(CAPTIONS.values()) + UNRELATED)
    sims = (img.embeddings @ txt.T).numpy()
    matching = np.diag(sims[:, :len(CAPTIONS)])
    unrelated = sims[:, len(CAPTIONS):]
    assert matching.min() > 0.3 and unrelated.max() < 0.1
    for i in range(len(CAPTIONS)):
        assert matching[i] > unrelated[i].max() + 0.2
    assert "cat" in img.notes[0].lower()           # the labels it saw: Egyptian cat, tiger cat, tabby
    assert len(s.labels) == 1000 and s.labels[281] == "tabby"


def test_label_text_similarity_through_the_stage(label_text_scorer, photo_refs):
    rows = [{"key": n, "images": [photo_refs[n]], "text": c} for n, c in CAPTIONS.items()]
    rows.append({"key": "mismatch", "images": [photo_refs["rocket"]], "text": UNRELATED[0]})
    stage = S.build("clip_score", {"backend": "label_text_similarity", "threshold": 0.03, "device": "cpu"})
    stage.scorer, stage._is_setup = label_text_scorer, True   # reuse the loaded models
    result = stage.run(rows_table(rows))
    assert sorted(result.kept.column("key").to_pylist()) == sorted(CAPTIONS)
    assert result.dropped.column(R.REASON).to_pylist() == ["clip:below_threshold"]
    assert "image looks like" in result.dropped.column(R.DETAIL).to_pylist()[0]
    assert all(v is not None for v in result.kept.column("clip_score").to_pylist())
    assert stage.summarize(result.kept.select(["source", "clip_score"]))["clip_score"]["scorer"].startswith(
        "label_text_similarity")


def test_sample_text_drops_grounding_markup():
    conv = [{"role": "user", "content": "<image>\nFind the cat."},
            {"role": "assistant", "content": "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(106,067),(345,245)<|box_end|>"}]
    assert ST.sample_text(None, conv) == "the cat (106,067),(345,245)"


def test_sub_batches_cover_every_item_once_with_a_short_first_batch():
    for n in (0, 1, 3, 4, 5, 16, 17, 100):
        bounds = ST.sub_batches(n, 16)
        covered = [i for a, b in bounds for i in range(a, b)]
        assert covered == list(range(n))
        assert all(b - a <= 16 for a, b in bounds)
        if n:
            assert bounds[0] == (0, min(n, 4))
