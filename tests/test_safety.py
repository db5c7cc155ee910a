"""nsfw_filter: NudeNet's shipped detector for real on photos that ship with scikit-image, and the
keyword rules. No NSFW image can ship with a test suite, so the classifier path is proven with a class
the detector does find in a benign photo (FACE_FEMALE on the astronaut portrait)."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from curate.base import records as R
from curate.safety.classifier import NudityDetector, model_path
from curate.safety.rules import KeywordRule, load_keywords, sample_urls
from curate.base import build

pytest.importorskip("nudenet")
skimage = pytest.importorskip("skimage")
PHOTOS = os.path.join(os.path.dirname(skimage.__file__), "data")


def table_of(samples: list[dict]) -> object:
    rows = []
    for i, s in enumerate(samples):
        ref = R.image_ref(os.path.join(PHOTOS, s["photo"]), width=512, height=512) if s.get("photo") else None
        rows.append(R.Sample(key=f"s/{s['key']}", source="s", category=s.get("category", "caption"),
                             images=[ref] if ref else [], text=s.get("text", "a photo"),
                             meta=s.get("meta"), ordinal=i).to_row())
    return R.rows_to_table(rows)


@pytest.fixture(scope="module")
def keyword_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kw")
    (d / "url.txt").write_text("# blocked hosts and path words\nnsfw\nAdult-Site\n\n")
    (d / "caption.txt").write_text("explicit content\nxxx  # comment after a keyword\n")
    return str(d / "url.txt"), str(d / "caption.txt")


def test_model_ships_in_the_wheel():
    assert model_path().endswith("320n.onnx") and os.path.getsize(model_path()) > 1_000_000


def test_detector_finds_a_face_and_nothing_unsafe_in_benign_photos():
    from PIL import Image
    det = NudityDetector()
    found = det.detect(Image.open(os.path.join(PHOTOS, "astronaut.png")))
    assert found and found[0].label == "FACE_FEMALE" and found[0].score > 0.5
    assert det.detect(Image.open(os.path.join(PHOTOS, "coffee.png"))) == []


def test_stage_rejects_with_the_score_and_keeps_the_rest(keyword_files):
    url_file, caption_file = keyword_files
    table = table_of([
        {"key": "face", "photo": "astronaut.png"},
        {"key": "coffee", "photo": "coffee.png"},
        {"key": "url", "photo": "coffee.png", "meta": {"url": "https://cdn.example.com/NSFW_pics/1.jpg"}},
        {"key": "caption", "photo": "coffee.png", "text": "Contains EXPLICIT\ncontent here"},
        {"key": "essex", "photo": "chelsea.png", "text": "A cat in Essex", "meta": {"url": "https://x.com/nsfwish"}},
        {"key": "other", "photo": "astronaut.png", "category": "ocr"},
        {"key": "broken", "photo": "no-such.png"},
    ])
    st_ = build("nsfw_filter", {"unsafe_classes": ["FACE_FEMALE"], "threshold": 0.5, "categories": ["caption"],
                                "url_keywords_file": url_file, "caption_keywords_file": caption_file})
    res = st_.run(table)
    dropped = {r["key"][2:]: r for r in res.dropped.to_pylist()}
    kept = {r["key"][2:]: r for r in res.kept.to_pylist()}
    assert set(kept) == {"coffee", "essex", "other"}
    assert dropped["face"]["_reason"] == "nsfw:classifier"
    assert "FACE_FEMALE score 0.7" in dropped["face"]["_detail"] and dropped["face"]["nsfw_score"] > 0.5
    assert dropped["url"]["_reason"] == "nsfw:url_keyword" and "'nsfw'" in dropped["url"]["_detail"]
    assert dropped["url"]["nsfw_score"] is None            # rules run first; the detector never ran
    assert dropped["caption"]["_reason"] == "nsfw:caption_keyword"
    assert dropped["broken"]["_status"] == R.QUARANTINED
    assert kept["coffee"]["nsfw_score"] == 0.0 and kept["other"]["nsfw_score"] is None
    summary = st_.summarize(res.kept)["nsfw_score"]["per_source"]["s"]
    assert summary["scored"] == 2


def test_default_classes_keep_a_portrait():
    res = build("nsfw_filter").run(table_of([{"key": "face", "photo": "astronaut.png"}]))
    assert res.kept.num_rows == 1 and res.kept.column("nsfw_score")[0].as_py() == 0.0


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="unsafe_classes"):
        build("nsfw_filter", {"unsafe_classes": ["NOT_A_CLASS"]})
    with pytest.raises(ValueError, match="threshold"):
        build("nsfw_filter", {"threshold": 0})
    with pytest.raises(ValueError, match="url_keywords_file"):
        build("nsfw_filter", {"url_keywords_file": str(tmp_path / "missing.txt")})


def test_keyword_files_and_urls(tmp_path):
    p = tmp_path / "k.txt"
    p.write_text("B\n a  b \n# c\nb\n")
    assert load_keywords(p) == ["a b", "b"]
    assert sample_urls('{"url": "http://a/b.jpg"}', [{"uri": "https://h/x.png"}, {"uri": "/local.png"}]) == \
        ["http://a/b.jpg", "https://h/x.png"]
    assert sample_urls("not json", None) == []


WORDS = st.text(alphabet="abcxyz", min_size=1, max_size=5)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WORDS, st.lists(WORDS, max_size=5), st.lists(WORDS, max_size=5))
def test_keywords_match_whole_words_only(keyword, before, after):
    rule = KeywordRule((keyword,))
    text = " ".join(before + [keyword.upper()] + after)
    assert rule.find(text) == keyword
    glued = "q" + keyword + "q"
    assert rule.find(glued) is None
    assert rule.find_in_url(f"https://h.com/{'_'.join(before + [keyword])}.jpg") == keyword
