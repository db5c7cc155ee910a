"""The model profile: presets, overrides from a recipe mapping, one declaration per run, and the
typed profile reaching count_tokens, pack and shards (and the manifest, its one dict)."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from curate.base import records as R
from curate.base import StageContext
from pack import tokens as T
from pack.profile import PRESETS, ModelProfile, profile_from_mapping, run_profile
from pack.packing.stage import PackStage
from pack.tokens.stage import CountTokensStage


def test_presets_carry_the_processor_numbers():
    q2 = profile_from_mapping("qwen2-vl")
    assert (q2.patch_size, q2.merge_size, q2.temporal_patch_size) == (14, 2, 2)
    assert (q2.min_pixels, q2.max_pixels) == (56 * 56, 28 * 28 * 1280) and q2.rope == "mrope"
    q25 = profile_from_mapping({"preset": "qwen2.5-vl"})
    assert q25.max_pixels == 12845056 and q25.tokens_per_second == 2 and q25.preset == "qwen2.5-vl"
    oq = profile_from_mapping("open-qwen2vl")
    assert oq.image_mode == "fixed" and oq.fixed_tokens_per_image == 144 and oq.rope == "1d"
    assert oq.vit_patches_per_token() == pytest.approx(729 / 144)
    assert q2.vit_patches_per_token() == 4.0
    assert set(PRESETS) == {"qwen2-vl", "qwen2.5-vl", "open-qwen2vl", "openpangu-vl"}


def test_overrides_apply_on_top_of_the_preset_and_round_trip_through_json():
    p = profile_from_mapping({"preset": "qwen2.5-vl", "max_pixels": 1003520, "template": "plain"})
    assert p.max_pixels == 1003520 and p.tokens_per_second == 2 and p.template == "plain"
    back = profile_from_mapping(json.loads(json.dumps(p.to_dict())))
    assert back == p


@pytest.mark.parametrize("raw,field", [({"max_pixel": 5}, "max_pixel"), ({"preset": "llava"}, "preset"),
                                       ({"merge_size": 0}, "merge_size"), ({"template": "jinja"}, "template"),
                                       ({"min_pixels": 10**9}, "min_pixels"), ({"patch_size": True}, "patch_size"),
                                       ({"image_mode": "fixed"}, "rope"), (3, "model")])
def test_bad_declarations_name_the_field(raw, field):
    with pytest.raises(ValueError, match=field):
        profile_from_mapping(raw)


def _run(**declared) -> StageContext:
    """The context a recipe run gives its stages: the profile parsed once, typed."""
    return StageContext(profile=profile_from_mapping(declared or None))


def test_stages_read_the_run_profile_typed_and_never_parse_a_declaration():
    assert run_profile(StageContext()) == ModelProfile()          # a stage built alone: the default
    profile = profile_from_mapping("open-qwen2vl")
    assert run_profile(StageContext(profile=profile)) is profile
    with pytest.raises(TypeError, match="ModelProfile"):          # a raw declaration there is a bug
        run_profile(StageContext(profile={"preset": "open-qwen2vl"}))


def _rows():
    img = {"uri": "x.jpg", "offset": -1, "size": -1, "member": None, "width": 1280, "height": 720, "format": "JPEG"}
    rows = [R.Sample("a", "s", "caption", images=[img], text="a red bus").to_row(),
            R.Sample("b", "s", "caption", images=[img, img], text="two images").to_row()]
    for i, r in enumerate(rows):
        r[R.ORDINAL] = i
    return rows


def test_count_tokens_reads_the_profile():
    table = R.rows_to_table(_rows(), R.BASE_SCHEMA)
    dyn = CountTokensStage(context=_run(max_pixels=1003520)).run(table).kept
    assert dyn.column("image_tokens").to_pylist()[0] == [T.image_tokens(1280, 720, max_pixels=1003520)]
    fixed = CountTokensStage(context=_run(preset="open-qwen2vl")).run(table).kept
    assert fixed.column("image_tokens").to_pylist() == [[144], [144, 144]]


def test_pack_length_is_the_profiles_context_length():
    assert PackStage(context=_run(context_length=2048)).config.context_length == 2048
    assert PackStage(context=_run(context_length=2048), context_length=2048).config.context_length == 2048
    with pytest.raises(ValueError, match="differs from the model profile's context_length 2048"):
        PackStage(context=_run(context_length=2048), context_length=4096)
    # built alone (a notebook): its own setting, else the profile's default
    assert PackStage(context_length=1024).config.context_length == 1024
    assert PackStage().config.context_length == ModelProfile().context_length == 4096


def test_manifest_carries_the_profile_and_the_writers_parse_nothing(tmp_path, monkeypatch):
    from pack.shards.stage import ShardsStage
    from tests.shards_corpus import packed_table
    table = packed_table(tmp_path / "img", n=40, context_length=1024, seed=5)
    declared = {"preset": "qwen2.5-vl", "max_pixels": 1003520, "context_length": 1024}
    ctx = StageContext(seed=1, out_dir=str(tmp_path), profile=profile_from_mapping(declared))
    stage = ShardsStage(context=ctx, dp_size=2, micro_batches=1, packs_per_shard=4)

    def no_new_profile(self):
        raise AssertionError("a model profile was built (parsed) after the stage was")
    monkeypatch.setattr(ModelProfile, "__post_init__", no_new_profile)
    stage.run(table)
    monkeypatch.undo()
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert profile_from_mapping(manifest["model"]) == profile_from_mapping(declared)
    assert manifest["model"]["max_pixels"] == 1003520 and manifest["model"]["patch_size"] == 14
    assert manifest["context_length"] == manifest["model"]["context_length"] == 1024


def test_manifests_written_before_the_length_had_a_default_still_load():
    old = {**ModelProfile().to_dict(), "context_length": None}
    assert profile_from_mapping(old) == ModelProfile()


def test_profile_is_frozen_and_comparable():
    p = ModelProfile()
    assert p == ModelProfile() and hash(p) == hash(ModelProfile())
    with pytest.raises(AttributeError):
        p.max_pixels = 1  # type: ignore[misc]


@given(model=st.one_of(st.none(), st.integers(1, 8)), packs=st.lists(st.integers(1, 8), max_size=3))
def test_the_pack_length_resolves_to_its_one_declaration_or_names_the_disagreement(model, packs):
    from pack.profile import run_declaration
    where = [(f"stages[{i}].settings.context_length", n * 512) for i, n in enumerate(packs)]
    declared = [x for x in [None if model is None else model * 512] + [n for _, n in where] if x is not None]
    if len(set(declared)) > 1:
        first_other = next(w for w, n in where if n != declared[0])
        with pytest.raises(ValueError, match=rf"^{re.escape(first_other)}: \d+ differs from"):
            run_declaration({"preset": "qwen2-vl", "context_length": None if model is None else model * 512}, where)
    else:
        got = run_declaration({} if model is None else {"context_length": model * 512}, where)
        assert got.context_length == (declared[0] if declared else ModelProfile().context_length)
        assert dataclasses.replace(got, context_length=4096) == ModelProfile()   # nothing else moved
