"""pack.trainer.video_pixels: the Qwen2-VL video processor's steps without torchvision.

The patch layout is checked against transformers' own Qwen2-VL image processor (``patchify`` of the
PIL backend, which imports without torchvision): a video's temporal patch holds frame 0 and frame 1
where the image processor holds its two copies of one image. The sampled frames follow
``Qwen2VLVideoProcessor.sample_frames``; the whole processor is compared where torchvision exists.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pack import packformat as F
from pack import tokens as T
from pack.profile import profile_from_mapping
from pack.trainer.video_pixels import VideoInputs, sample_indices

pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

QWEN = profile_from_mapping("qwen2-vl")


@settings(max_examples=15, deadline=None)
@given(gh=st.integers(1, 3), gw=st.integers(1, 3), seed=st.integers(0, 1000))
def test_patch_rows_are_the_image_processors_with_frames_in_the_temporal_slots(gh, gw, seed):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    rng = np.random.default_rng(seed)
    H, W = gh * 28, gw * 28
    frames = rng.standard_normal((4, 3, H, W)).astype(np.float32)
    rows = VideoInputs(QWEN).patchify(frames)                        # (2 * gh*2 * gw*2, 3*2*14*14)
    improc = Qwen2VLImageProcessorPil()
    per_t = rows.shape[0] // 2
    assert rows.shape == (2 * (H // 14) * (W // 14), 3 * 2 * 14 * 14)
    for t in range(2):
        for slot in range(2):
            want, _, _ = improc.patchify(frames[2 * t + slot], patch_size=14, merge_size=2, temporal_patch_size=2)
            got = rows[t * per_t:(t + 1) * per_t].reshape(per_t, 3, 2, 14, 14)[:, :, slot]
            np.testing.assert_array_equal(got, want.reshape(per_t, 3, 2, 14, 14)[:, :, 0])


def test_sampled_frames_are_the_processors():
    # Qwen2VLVideoProcessor.sample_frames: torch.arange(0, total, total / n).int()
    assert sample_indices(8, 4) == [0, 2, 4, 6]
    assert sample_indices(125, 10) == [0, 12, 25, 37, 50, 62, 75, 87, 100, 112]
    with pytest.raises(ValueError):
        sample_indices(3, 4)


def _video(key: str) -> dict:
    from curate.media.video import probe_video
    from demo_data.videos import sample_clip
    data = sample_clip(key)
    head = probe_video(data)
    v = {"member": f"{key}.mp4", "bytes": data, "width": head.width, "height": head.height,
         "duration_s": head.duration_s, "fps": head.fps, "frames": head.frames}
    v["grid_thw"] = list(T.video_grid(head.duration_s, head.fps, head.width, head.height, T.VideoSettings(), head.frames))
    return v


def test_a_clip_becomes_rows_of_its_recorded_grid_and_its_frames():
    inputs = VideoInputs(QWEN)
    bars, ball = _video("clip-bars"), _video("clip-ball")
    pixels, grids = inputs([bars, ball], "test")
    assert grids.tolist() == [bars["grid_thw"], ball["grid_thw"]] == [[2, 20, 28]] * 2
    assert pixels.shape == (2 * 2 * 20 * 28, 3 * 2 * 14 * 14) and pixels.dtype == np.float32
    # the first row's first temporal slot is the top-left 14x14 patch of sampled frame 0, resized to the grid
    from PIL import Image
    from pack.trainer.video_pixels import decode_frames
    frame = decode_frames(bars["bytes"], [0])[0].resize((28 * 14, 20 * 14), Image.BICUBIC)
    patch = (np.asarray(frame, dtype=np.float32)[:14, :14].transpose(2, 0, 1) / 255.0
             - inputs.mean) / inputs.std
    np.testing.assert_allclose(pixels[0].reshape(3, 2, 14, 14)[:, 0], patch, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(pixels[:560], pixels[1120:1680])             # two different clips


def test_a_grid_that_disagrees_with_the_header_or_a_short_stream_is_a_format_error():
    inputs = VideoInputs(QWEN)
    v = _video("clip-bars")
    with pytest.raises(F.PackFormatError, match="recorded"):
        inputs([{**v, "grid_thw": [2, 20, 30]}], "shard.tar:k")
    with pytest.raises(F.PackFormatError, match="fewer frames"):
        inputs([{**v, "frames": 40, "duration_s": 10.0, "grid_thw": None}], "shard.tar:k")


def test_the_live_processor_agrees_when_torchvision_is_installed():
    pytest.importorskip("torchvision", reason="torchvision is not installed here (and must not be required)")
    import torch
    from transformers import Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata
    from pack.trainer.video_pixels import decode_frames
    v = _video("clip-bars")
    frames = decode_frames(v["bytes"], list(range(v["frames"])))
    video = torch.as_tensor(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2)
    out = Qwen2VLVideoProcessor()(videos=[video], do_sample_frames=True, fps=2.0,
                                  video_metadata=[VideoMetadata(total_num_frames=v["frames"], fps=v["fps"])],
                                  return_tensors="np")
    pixels, grids = VideoInputs(QWEN)([v], "test")
    assert out["video_grid_thw"].tolist() == grids.tolist()
    assert np.abs(out["pixel_values_videos"] - pixels).mean() < 0.05      # bicubic in PIL vs torchvision
