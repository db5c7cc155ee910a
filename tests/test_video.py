"""Videos from tar and LLaVA JSON through token counting into packs.

What is checked against whom:
* the header probe against decoding (PyAV decodes every frame; transformers' own PyAV reader reports
  its metadata for the MP4);
* the video token arithmetic against grids that transformers' ``Qwen2VLVideoProcessor`` reported
  (transformers 5.17.0 with torchvision 0.26, run on real frame tensors on another machine and
  recorded below, since torchvision is not installed here), against transformers' ``smart_resize``
  here, and against the live processor when torchvision happens to be importable;
* a small recipe run (inline) from a WebDataset tar to packed shards: the pack's video grid and
  token count equal the counted ones and the ``<|video_pad|>`` run in ``input_ids``, and the loader
  hands back the clip's bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.base import records as R
from curate.readers.read import read_source
from curate.media.video import UnreadableVideo, probe_video
from pack import tokens as T
from pack.profile import profile_from_mapping
from demo_data.sample import write_tar
from demo_data.videos import CLIPS, build_videos, sample_clip

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {key: sample_clip(key) for key, *_ in CLIPS}


@pytest.fixture(scope="module")
def h264_clip() -> bytes:
    from demo_data.videos import DRAW, encode_video
    return encode_video([DRAW["clip-bars"](i) for i in range(8)], "mp4", "libx264")   # the common codec


# --- probe -------------------------------------------------------------------------------------------
def _decoded_frames(data: bytes) -> tuple[int, tuple[int, int]]:
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), frames[0].shape[:2]


def test_the_header_says_what_decoding_finds(clips, h264_clip, tmp_path):
    for key, container, codec, _ in CLIPS:
        head = probe_video(clips[key])
        n, (h, w) = _decoded_frames(clips[key])
        assert (head.width, head.height, head.frames) == (w, h, n) == (64, 48, 8)
        assert head.fps == 4.0 and head.duration_s == 2.0 and head.format == container
    head, (n, (h, w)) = probe_video(h264_clip), _decoded_frames(h264_clip)
    assert (head.width, head.height, head.frames, head.fps, head.codec) == (w, h, n, 4.0, "h264") == (64, 48, 8, 4.0, "h264")
    # transformers' own PyAV reader (it takes the frame count from the MP4 sample table)
    from transformers.video_utils import read_video_pyav
    path = tmp_path / "bars.mp4"
    path.write_bytes(clips["clip-bars"])
    video, meta = read_video_pyav(str(path), sample_indices_fn=lambda metadata, **_: np.arange(metadata.total_num_frames))
    head = probe_video(clips["clip-bars"])
    assert (meta.total_num_frames, meta.fps, meta.width, meta.height) == (head.frames, head.fps, head.width, head.height)
    assert video.shape == (8, 48, 64, 3)


def test_sample_clips_are_deterministic(clips):
    assert sample_clip("clip-bars") == clips["clip-bars"] and sample_clip("clip-ball") == clips["clip-ball"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_bytes_raise_a_named_reason_never_anything_else(clips, h264_clip, data):
    clip = data.draw(st.sampled_from([clips["clip-bars"], clips["clip-ball"], h264_clip]))
    kind = data.draw(st.sampled_from(["cut", "flip", "random"]))
    if kind == "cut":
        blob = clip[:data.draw(st.integers(0, len(clip) - 1))]
    elif kind == "flip":
        i = data.draw(st.integers(0, len(clip) - 1))
        blob = clip[:i] + bytes([clip[i] ^ data.draw(st.integers(1, 255))]) + clip[i + 1:]
    else:
        blob = data.draw(st.binary(max_size=512))
    try:
        head = probe_video(blob)
    except UnreadableVideo as exc:
        assert exc.reason in {"not_a_video", "no_video_stream", "unknown_codec", "no_frame_size", "no_frame_rate",
                              "no_duration", "implausible_frame_rate", "inconsistent_header"}
        return
    assert head.width > 0 and head.height > 0 and 0 < head.fps <= 1000 and head.duration_s > 0
    assert head.duration_s * head.fps / 2 - 2 <= head.frames <= head.duration_s * head.fps * 2 + 2


# --- readers -----------------------------------------------------------------------------------------
def test_tar_members_become_video_refs_with_offset_size_and_hash(clips, tmp_path):
    photo = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (40, 30), (9, 99, 199)).save(photo, format="PNG")
    tar = tmp_path / "v.tar"
    write_tar(tar, [("a.mp4", clips["clip-bars"]), ("a.txt", b"bars"),
                    ("b.png", photo.getvalue()), ("b.webm", clips["clip-ball"]), ("b.txt", b"a ball and a square"),
                    ("c.webm", b"\x1aE\xdf\xa3 not really"), ("c.txt", b"broken"),
                    ("d.json", b'{"x": 1}'), ("d.txt", b"nothing to see")])
    read = read_source(str(tar), "webdataset", source="v", category="video")
    kept = {r["key"]: r for r in read.kept.to_pylist()}
    dropped = {r["key"]: (r[R.STATUS], r[R.REASON]) for r in read.dropped.to_pylist()}
    assert dropped == {"v/c": (R.QUARANTINED, "video:not_a_video"), "v/d": (R.REJECTED, "missing_image")}
    raw = tar.read_bytes()
    for key, clip in (("v/a", "clip-bars"), ("v/b", "clip-ball")):
        (ref,) = kept[key]["videos"]
        assert raw[ref["offset"]:ref["offset"] + ref["size"]] == clips[clip]
        assert ref["sha256"] == hashlib.sha256(clips[clip]).hexdigest()
        assert (ref["width"], ref["height"], ref["frames"], ref["fps"], ref["duration_s"]) == (64, 48, 8, 4.0, 2.0)
    assert len(kept["v/b"]["images"]) == 1 and kept["v/b"]["videos"][0]["format"] == "webm"
    from pack.packformat import media_ext   # the shard member's suffix: the container, whatever the path says
    assert media_ext({**kept["v/b"]["videos"][0], "member": None, "uri": "clips/no-suffix"}) == "webm"


def test_llava_video_paths_are_resolved_probed_and_placed(clips, tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "bars.mp4").write_bytes(clips["clip-bars"])
    (tmp_path / "clips" / "junk.mp4").write_bytes(b"\x00" * 300)
    q = [{"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "A bar moves."}]
    recs = [{"id": "plain", "video": "clips/bars.mp4", "conversations": q},
            {"id": "tagged", "video": "clips/bars.mp4",
             "conversations": [{"from": "human", "value": "Watch <video> and tell."}, q[1]]},
            {"id": "two-tags", "video": "clips/bars.mp4",
             "conversations": [{"from": "human", "value": "<video><video>"}, q[1]]},
            {"id": "junk", "video": "clips/junk.mp4", "conversations": q},
            {"id": "escape", "video": "../outside.mp4", "conversations": q}]
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    read = read_source(str(path), "llava", source="l", category="video")
    kept = {r["key"]: r for r in read.kept.to_pylist()}
    dropped = {r["key"]: r[R.REASON] for r in read.dropped.to_pylist()}
    assert dropped == {"l/two-tags": "video_placeholder_mismatch", "l/junk": "video:not_a_video",
                       "l/escape": "image:outside_root"}
    assert kept["l/plain"]["conversations"][0]["content"] == "<video>\nWhat happens?"
    assert kept["l/tagged"]["conversations"][0]["content"] == "Watch <video> and tell."
    ref = kept["l/plain"]["videos"][0]
    assert ref["uri"].endswith("clips/bars.mp4") and ref["sha256"] == hashlib.sha256(clips["clip-bars"]).hexdigest()


# --- token arithmetic --------------------------------------------------------------------------------
# (total frames, fps, height, width, sample fps, cap_pixels_per_frame, max_video_tokens) -> video_grid_thw,
# as transformers 5.17.0's Qwen2VLVideoProcessor(cap_pixels_per_frame=..., max_video_tokens=...) reported
# for zero-valued (T, 3, H, W) uint8 tensors with VideoMetadata(total_num_frames, fps) and
# do_sample_frames=True, fps=sample fps (torchvision 0.26, 2026-11-29).
PROCESSOR_GRIDS = [
    (8, 4.0, 48, 64, 2.0, False, 128000, [2, 20, 28]), (8, 4.0, 48, 64, 2.0, True, 2048, [2, 20, 28]),
    (8, 4.0, 48, 64, 1.0, True, 128000, [2, 20, 28]), (60, 30.0, 240, 320, 2.0, True, 2048, [2, 20, 28]),
    (125, 25.0, 360, 640, 2.0, False, 128000, [5, 26, 46]), (125, 25.0, 360, 640, 2.0, True, 2048, [5, 26, 46]),
    (17, 8.0, 100, 37, 2.0, True, 128000, [2, 38, 14]), (9, 3.0, 1080, 1920, 2.0, False, 128000, [3, 40, 72]),
    (9, 3.0, 1080, 1920, 2.0, True, 128000, [3, 40, 72]), (9, 3.0, 1080, 1920, 2.0, True, 2048, [3, 36, 66]),
    (300, 10.0, 90, 160, 2.0, True, 2048, [30, 18, 32]), (301, 30.0, 50, 500, 1.0, False, 128000, [5, 8, 72]),
    (48, 24.0, 720, 1280, 4.0, False, 128000, [4, 40, 72]), (48, 24.0, 720, 1280, 4.0, True, 128000, [4, 40, 72]),
    (48, 24.0, 720, 1280, 4.0, True, 2048, [4, 32, 56]), (7, 7.0, 28, 28, 2.0, True, 2048, [2, 24, 24]),
    (40, 10.0, 480, 640, 2.0, True, 2048, [4, 34, 46]), (700, 2.0, 64, 64, 2.0, True, 128000, [350, 24, 24]),
    (5, 2.0, 64, 48, 2.0, False, 128000, [2, 28, 20]),
]


def _settings(sample_fps: float, cap: bool, max_video_tokens: int) -> T.VideoSettings:
    return T.VideoSettings(sample_fps=sample_fps, pixel_budget="total" if cap else "per_frame",
                           total_pixels=int(max_video_tokens * 28 * 28 * 0.9))


@pytest.mark.parametrize("frames,fps,h,w,sample_fps,cap,mvt,grid", PROCESSOR_GRIDS)
def test_video_grids_equal_the_processor_s(frames, fps, h, w, sample_fps, cap, mvt, grid):
    s = _settings(sample_fps, cap, mvt)
    assert list(T.video_grid(frames / fps, fps, w, h, s, total_frames=frames)) == grid
    assert T.video_tokens(frames / fps, fps, w, h, s, total_frames=frames) == grid[0] * grid[1] * grid[2] // 4


def test_the_live_processor_agrees_when_torchvision_is_installed():
    pytest.importorskip("torchvision", reason="torchvision is not installed here (and must not be required); "
                        "PROCESSOR_GRIDS holds the processor's answers recorded elsewhere")
    import torch
    from transformers import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata
    for frames, fps, h, w, sample_fps, cap, mvt, _ in PROCESSOR_GRIDS[:8]:
        proc = Qwen2VLVideoProcessor(cap_pixels_per_frame=cap, max_video_tokens=mvt)
        out = proc(videos=[torch.zeros((frames, 3, h, w), dtype=torch.uint8)], do_sample_frames=True, fps=sample_fps,
                   video_metadata=[VideoMetadata(total_num_frames=frames, fps=fps)], return_tensors="pt")
        s = _settings(sample_fps, cap, mvt)
        assert out["video_grid_thw"][0].tolist() == list(T.video_grid(frames / fps, fps, w, h, s, frames))


@settings(max_examples=200, deadline=None)
@given(frames=st.integers(2, 2000), fps=st.sampled_from([1.0, 5.0, 12.5, 24.0, 25.0, 29.97, 30.0, 60.0]),
       h=st.integers(16, 2160), w=st.integers(16, 3840), sample_fps=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
       cap=st.booleans(), mvt=st.sampled_from([1024, 24576, 128000]))
def test_frame_size_is_transformers_smart_resize_under_the_budget(frames, fps, h, w, sample_fps, cap, mvt):
    """The spatial part is transformers' own smart_resize (the PIL module imports without torchvision)
    with the per-frame cap the processor's ``resize`` computes; t is the sampled frames over 2."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    if max(h, w) / min(h, w) > 200:
        return
    s = _settings(sample_fps, cap, mvt)
    try:
        n = int(T.video_frames(frames / fps, fps, s, total_frames=frames))
    except ValueError:
        return   # under 2 sampled frames: the processor cannot sample it either
    cap_px = s.max_pixels if not cap else max(min(s.max_pixels, s.total_pixels * 2 // n), int(s.min_pixels * 1.05))
    rh, rw = smart_resize(h, w, factor=28, min_pixels=s.min_pixels, max_pixels=cap_px)
    assert T.video_grid(frames / fps, fps, w, h, s, frames) == (n // 2, rh // 14, rw // 14)


def test_openpangu_frame_budget_shrinks_frames_as_their_number_grows():
    """openPangu-VL section 2.4: frame resolution inversely proportional to the sampled frames."""
    s = profile_from_mapping("openpangu-vl").video_settings()
    assert s.sample_fps == 2.0 and s.pixel_budget == "total" and s.total_pixels == int(24576 * 28 * 28 * 0.9)
    seconds = np.array([10, 30, 60, 120, 300])
    n = T.video_frames(seconds.astype(float), 30.0, s)
    per_frame = np.array([T.video_tokens(float(d), 30.0, 1920, 1080, s) for d in seconds]) / (n // 2)
    assert np.all(np.diff(per_frame) <= 0) and per_frame[0] > 2 * per_frame[-1]
    bound, share, floor = T.frame_max_pixels(n, s), s.total_pixels * 2 // n, int(s.min_pixels * 1.05)
    between = (share < s.max_pixels) & (share > floor)
    assert between.sum() >= 3 and np.all(bound[between] == share[between])   # pixels * frames = the budget
    assert np.all(bound[share <= floor] == floor) and np.all(bound[share >= s.max_pixels] == s.max_pixels)
    qwen = profile_from_mapping("qwen2-vl").video_settings()
    assert T.video_tokens(300.0, 30.0, 1920, 1080, qwen) > T.video_tokens(300.0, 30.0, 1920, 1080, s)
    per = T.VideoSettings(pixel_budget="per_frame", total_pixels=1)
    assert T.frame_max_pixels([4, 400], per).tolist() == [per.max_pixels, per.max_pixels]


# --- tar -> recipe -> pack -> loader -----------------------------------------------------------------
RECIPE = """
name: video-e2e
seed: 7
sources:
  - {name: videos, path: "%(root)s/videos/*.tar", format: webdataset, category: video}
stages:
  - {name: image_filter, settings: {preset: default}}
  - {name: text_filter, settings: {preset: default}}
  - {name: grounding_check, settings: {require_padding: true}}
  - {name: image_dedup, settings: {survivor_by: resolution, max_distance: 12}}
  - {name: text_dedup, settings: {survivor_by: resolution, threshold: 0.6, ngram: 5}}
  - {name: count_tokens}
  - {name: pack, settings: {context_length: 1024, algorithm: plan}}
  - {name: shards, settings: {dp_size: 1, micro_batches: 1, leftover: pad_with_repeats, input_ids: true}}
output: {dir: %(out)s}
model: {preset: qwen2-vl, template: chat, context_length: 1024}
"""


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    from pipelines.runner import run
    work = tmp_path_factory.mktemp("video_e2e")
    planted = build_videos(work / "data")
    assert planted == {"videos/clip-broken": ("ingest", "video:not_a_video")}
    recipe = work / "r.yaml"
    recipe.write_text(RECIPE % {"root": work / "data", "out": work / "out"})
    run(str(recipe), out=work / "out", executor="inline", progress=False)
    return work / "out"


def test_every_stage_passes_the_clips_and_ingest_names_the_broken_one(run_out):
    report = json.loads((run_out / "report.json").read_text())
    stages = {e["name"]: e for e in report["stages"]}
    assert stages["ingest"]["quarantined"] == {"video:not_a_video": 1}
    for name, e in stages.items():
        if name != "ingest":
            assert e["in"] == 2 and not e["rejected"] and not e["quarantined"], name
    assert stages["shards"]["out"] == 2


def test_packs_carry_the_counted_grids_tokens_and_bytes(run_out, clips):
    from pack.trainer.loader import PackedShards
    from pack.tokens import load_tokenizer
    from pipelines.runner import read_kept
    counted = read_kept(run_out / "stages" / sorted(p.name for p in (run_out / "stages").iterdir()
                                                     if p.name.endswith("count_tokens"))[0],
                        ["key", "video_tokens", "num_tokens", "videos"]).to_pylist()
    counted = {r["key"]: r for r in counted}
    video_pad = load_tokenizer(None).token_id(T.VIDEO_PAD)
    seen = {}
    for pack in PackedShards(run_out / "shards", rank=0, world_size=1):
        ids = pack["input_ids"]
        for (a, b), seg in zip(zip(pack["cu_seqlens"][:-1], pack["cu_seqlens"][1:]), pack["samples"]):
            if not seg["videos"]:
                continue
            (v,) = seg["videos"]
            ref = counted[seg["key"]]["videos"][0]
            grid = T.video_grid(ref["duration_s"], ref["fps"], ref["width"], ref["height"], T.VideoSettings(),
                                ref["frames"])
            assert v["grid_thw"] == list(grid) == [2, 20, 28]
            assert v["tokens"] == counted[seg["key"]]["video_tokens"][0] == 2 * 20 * 28 // 4
            assert int((ids[a:b] == video_pad).sum()) == v["tokens"]
            assert seg["length"] == counted[seg["key"]]["num_tokens"] == b - a
            seen[seg["key"]] = v
        for vid in pack["videos"]:
            seen[vid["sample"]] = {**seen[vid["sample"]], "bytes": vid["bytes"]}
        assert pack["position_ids"].shape == (3, len(ids))
    assert seen["videos/clip-bars"]["bytes"] == clips["clip-bars"]
    assert seen["videos/clip-ball"]["bytes"] == clips["clip-ball"]
    assert {v["member"].rsplit(".", 1)[1] for v in seen.values()} == {"mp4", "webm"}


def test_video_positions_equal_get_rope_index_and_a_tiny_qwen2_vl_takes_the_pack(run_out):
    """M-RoPE positions of every video segment against transformers' ``get_rope_index`` with the
    stored ``video_grid_thw``; then a tiny random Qwen2-VL (from a config) runs forward on the pack
    with pixel values of the grid's shape: its check that the video-pad run matches the features passes."""
    torch = pytest.importorskip("torch")
    from pack.trainer.loader import PackedShards
    from tests.tiny_qwen import tiny_qwen2_vl
    model = tiny_qwen2_vl()
    checked = 0
    for pack in PackedShards(run_out / "shards", rank=0, world_size=1):
        cu = pack["cu_seqlens"].tolist()
        grids = []
        for j, seg in enumerate(pack["samples"]):
            a, b = cu[j], cu[j + 1]
            seg_grids = [v["grid_thw"] for v in seg["videos"]]
            want, _ = model.model.get_rope_index(
                torch.as_tensor(pack["input_ids"][a:b], dtype=torch.long)[None],
                mm_token_type_ids=torch.as_tensor(pack["mm_token_type_ids"][a:b])[None],
                video_grid_thw=torch.as_tensor(seg_grids, dtype=torch.long))
            assert np.array_equal(pack["position_ids"][:, a:b], want[:, 0].numpy()), seg["key"]
            grids += seg_grids
            checked += 1
        thw = torch.as_tensor(grids, dtype=torch.long)
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(pack["input_ids"], dtype=torch.long)[None],
                        position_ids=torch.as_tensor(pack["position_ids"], dtype=torch.long)[:, None],
                        mm_token_type_ids=torch.as_tensor(pack["mm_token_type_ids"])[None],
                        pixel_values_videos=torch.randn(int(thw.prod(dim=1).sum()), 3 * 2 * 14 * 14),
                        video_grid_thw=thw)
        assert torch.isfinite(out.logits).all()
    assert checked == 2
