"""Build the bundled sample corpus from real photos that ship inside installed packages.

    python -m demo_data.sample data/sample

Photos come from scikit-image's ``data`` directory (astronaut, chelsea, coffee, rocket, motorcycle,
page, ...) and scikit-learn's sample images (china, flower); nothing is downloaded. Around them the
generator plants every hard case the pipeline must survive, each with the reason it should produce:

* curation cases (blank, tiny, extreme aspect, heavily compressed, oversized, boilerplate/looping/
  symbol captions, mismatched captions) for the image/text/CLIP stages;
* broken input (zero-byte, truncated and HTML-as-JPEG files, a decompression bomb, a non-UTF-8
  caption, an image without caption, a ``../x.jpg`` member, duplicated keys, NaN in JSON metadata,
  and a tar cut off mid-member) for ingest;
* LLaVA-style conversations, grounding records (valid and planted invalid) and text-only samples;
* two tiny videos (MP4 and WebM, encoded here by ``demo_data.videos``) and a broken one;
* ~20 interleaved documents in a MINT-1T-style tar (``demo_data.documents``): a corrupt image inside a
  good document, a photo twice in one document, a logo repeated across documents, a document longer
  than the context, a misaligned document and one whose image member is missing.

Everything is deterministic: fixed seeds, fixed tar headers (mtime 0), so the same package
versions give the same bytes. ``EXPECTED`` lists the planted keys and the reason each must get.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from demo_data.tarfiles import jpeg_bytes, png_bytes, tar_add, write_tar  # noqa: F401 (names other demo modules use)

SEED = 20261121


@dataclass(frozen=True)
class Photo:
    name: str
    file: str
    caption: str


def _package_dir(module: str) -> Path:
    import importlib.util
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{module} is not installed (make install)")
    return Path(list(spec.submodule_search_locations)[0])


def photos() -> list[Photo]:
    sk = _package_dir("skimage.data")
    sl = _package_dir("sklearn.datasets") / "images"
    return [
        Photo("astronaut", str(sk / "astronaut.png"), "An astronaut in a white spacesuit posing in front of an American flag."),
        Photo("chelsea", str(sk / "chelsea.png"), "A tabby cat with striped orange fur looking to the side."),
        Photo("coffee", str(sk / "coffee.png"), "A cup of coffee with latte art on a saucer with a spoon."),
        Photo("rocket", str(sk / "rocket.jpg"), "A rocket on the launch pad with a service tower against the sky."),
        Photo("motorcycle", str(sk / "motorcycle_left.png"), "A motorcycle parked in a garage next to a helmet and tools."),
        Photo("page", str(sk / "page.png"), "A scanned page of printed text from a book."),
        Photo("camera", str(sk / "camera.png"), "A black and white photo of a man with a camera on a tripod."),
        Photo("coins", str(sk / "coins.png"), "Many old coins lying on a dark background."),
        Photo("hubble", str(sk / "hubble_deep_field.jpg"), "Hubble deep field image of distant galaxies in space."),
        Photo("ihc", str(sk / "ihc.png"), "A microscope image of stained tissue cells."),
        Photo("china", str(sl / "china.jpg"), "A Chinese temple with a pagoda roof surrounded by trees."),
        Photo("flower", str(sl / "flower.jpg"), "A close-up of a pink dahlia flower with a bee."),
    ]


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb: the IDAT is one short row)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# planted key -> (stage, reason) the demo must report; checked by tests/test_demo.py
EXPECTED: dict[str, tuple[str, str]] = {}


def _plant(key: str, stage: str, reason: str, source: str = "photos") -> str:
    """Record that sample `key` of `source` must end with `reason` at `stage`; returns the bare key."""
    EXPECTED[f"{source}/{key}"] = (stage, reason)
    return key


def caption_shards(root: Path, rng: np.random.Generator) -> None:
    """Two good-ish shards of photos plus planted curation cases, and one broken shard."""
    out = root / "photos"
    out.mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, bytes]] = []
    for p in photos():
        im = Image.open(p.file)
        im.load()
        for scale in (1.0, 0.75, 0.5):
            w, h = max(1, int(im.width * scale)), max(1, int(im.height * scale))
            variant = im.resize((w, h), Image.BICUBIC) if scale != 1.0 else im
            key = f"{p.name}-{int(scale * 100):03d}"
            members += [(f"{key}.jpg", jpeg_bytes(variant)), (f"{key}.txt", p.caption.encode()),
                        (f"{key}.json", json.dumps({"url": f"https://example.org/{key}.jpg", "width": w,
                                                    "height": h, "caption": p.caption}).encode())]
    # Captions that do not describe their image (the relevance scorer should rank them low).
    swaps = [("rocket", "A bowl of ripe fruit on a wooden kitchen table."),
             ("chelsea", "A diagram of an electrical circuit board."),
             ("coffee", "Snow-covered mountains under a clear blue sky.")]
    by_name = {p.name: p for p in photos()}
    for name, caption in swaps:
        key = _plant(f"mismatch-{name}", "clip_score", "clip:below_threshold")
        im = Image.open(by_name[name].file)
        members += [(f"{key}.jpg", jpeg_bytes(im)), (f"{key}.txt", caption.encode())]
    write_tar(out / "part-00000.tar", members)

    astro = Image.open(by_name["astronaut"].file).convert("RGB")
    planted: list[tuple[str, bytes]] = []

    def add(key: str, image: bytes | None, caption: bytes | None, ext: str = "jpg", meta: bytes | None = None) -> None:
        if image is not None:
            planted.append((f"{key}.{ext}", image))
        if caption is not None:
            planted.append((f"{key}.txt", caption))
        if meta is not None:
            planted.append((f"{key}.json", meta))

    good_caption = b"An astronaut in a white spacesuit posing in front of a flag."
    # image rules
    add(_plant("blank", "image_filter", "image:blank"), jpeg_bytes(Image.new("RGB", (640, 480), (128, 128, 128))), good_caption)
    noise = (np.full((480, 640, 3), 200, np.uint8) + rng.integers(0, 2, (480, 640, 3), dtype=np.uint8))
    add(_plant("nearly-blank", "image_filter", "image:blank"), png_bytes(Image.fromarray(noise)), good_caption, "png")
    add(_plant("tiny", "image_filter", "image:min_side"), jpeg_bytes(astro.resize((64, 64))), good_caption)
    add(_plant("banner", "image_filter", "image:aspect_ratio"), jpeg_bytes(astro.resize((1200, 100))), good_caption)
    add(_plant("overcompressed", "image_filter", "image:low_jpeg_quality"), jpeg_bytes(astro, quality=4), good_caption)
    add(_plant("oversized", "image_filter", "image:too_large_to_decode"), bomb_png(9000, 9000), good_caption, "png")
    # text rules
    add(_plant("empty-caption", "text_filter", "text:empty"), jpeg_bytes(astro), b"")
    add(_plant("blank-caption", "text_filter", "text:empty"), jpeg_bytes(astro), b"   \n\t ")
    add(_plant("symbols", "text_filter", "text:symbol_ratio"), jpeg_bytes(astro), b"$$$ ### !!! %%% &&& *** @@@ ^^^ ~~~")
    add(_plant("loop", "text_filter", "text:repeated_ngrams"), jpeg_bytes(astro),
        ("an astronaut in space " * 30).strip().encode())
    add(_plant("boilerplate", "text_filter", "text:boilerplate"), jpeg_bytes(astro),
        b"Click here to subscribe. All rights reserved. Stock photo, royalty free image, download now.")
    # broken input: ingest must name each one
    add(_plant("zero-byte", "ingest", "image:empty_image"), b"", good_caption)
    add(_plant("truncated", "ingest", "image:truncated_image"), jpeg_bytes(astro)[:5000], good_caption)
    add(_plant("html", "ingest", "image:not_an_image"),
        b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>", good_caption)
    add(_plant("bomb", "ingest", "image:decompression_bomb"), bomb_png(20000, 20000), good_caption, "png")
    add(_plant("latin1-caption", "ingest", "caption_not_utf8"), jpeg_bytes(astro), "Caf\xe9 cr\xe8me".encode("latin-1"))
    add(_plant("no-caption", "ingest", "missing_text"), jpeg_bytes(astro), None)
    add(_plant("nan-meta", "ingest", "invalid_metadata"), jpeg_bytes(astro), good_caption, meta=b'{"width": NaN, "height": 512}')
    planted.append(("../escape.jpg", jpeg_bytes(astro)))
    _plant("../escape.jpg", "ingest", "unsafe_member_name")
    # the same key again in another shard: the later one is the duplicate
    add(_plant("astronaut-100", "ingest", "duplicate_key"), jpeg_bytes(astro), good_caption)
    write_tar(out / "part-00001.tar", planted)

    # A tar cut off in the middle of a member: the complete samples before the cut survive.
    cut_members = []
    for p in photos()[:3]:
        key = f"cut-{p.name}"
        cut_members += [(f"{key}.jpg", jpeg_bytes(Image.open(p.file))), (f"{key}.txt", p.caption.encode())]
    tmp = out / "part-00002.tar.full"
    write_tar(tmp, cut_members)
    data = tmp.read_bytes()
    tmp.unlink()
    last_jpeg_start = data.rfind(b"\xff\xd8\xff")
    (out / "part-00002.tar").write_bytes(data[: last_jpeg_start + 2000])
    _plant(f"cut-{photos()[2].name}", "ingest", "truncated_tar")


def conversations(root: Path) -> list[dict]:
    """LLaVA-style conversations with image files on disk (also used by the grounding generator)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    infos = []
    for p in photos():
        im = Image.open(p.file).convert("RGB")
        path = img_dir / f"{p.name}.jpg"
        path.write_bytes(jpeg_bytes(im))
        infos.append({"path": f"images/{p.name}.jpg", "abs_path": str(path), "width": im.width,
                      "height": im.height, "name": p.name, "caption": p.caption})
    records = []
    for info in infos:
        records.append({"id": f"describe-{info['name']}", "image": info["path"], "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image in one sentence."},
            {"from": "gpt", "value": info["caption"]}]})
        records.append({"id": f"qa-{info['name']}", "image": info["path"], "conversations": [
            {"from": "human", "value": "<image>\nWhat is the main subject of this picture?"},
            {"from": "gpt", "value": f"The main subject is {info['caption'][0].lower()}{info['caption'][1:]}"},
            {"from": "human", "value": "Is it indoors or outdoors?"},
            {"from": "gpt", "value": "It is hard to say for certain from the picture alone, but the lighting suggests "
                                     "it was taken in a controlled setting."}]})
    records.append({"id": "compare-two", "image": [infos[0]["path"], infos[1]["path"]],
                    "conversations": [{"from": "human", "value": "<image>\n<image>\nWhat differs between these images?"},
                                      {"from": "gpt", "value": "The first shows an astronaut, the second a cat."}]})
    records.append({"id": _plant("looping-answer", "text_filter", "text:tail_loop", "conversations"), "image": infos[2]["path"],
                    "conversations": [{"from": "human", "value": "<image>\nExplain what you see in detail."},
                                      {"from": "gpt", "value": "This is a cup of coffee on a saucer. The foam forms a "
                                       "leaf pattern and a spoon rests beside it. " + "And then the coffee. " * 40}]})
    records.append({"id": _plant("missing-image-file", "ingest", "image:missing_file", "conversations"), "image": "images/nope.jpg",
                    "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                      {"from": "gpt", "value": "A picture."}]})
    with open(root / "conversations.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return infos


def grounding(root: Path, infos: list[dict], rng: np.random.Generator) -> None:
    from demo_data.grounding import make_demo_records
    made = make_demo_records([{"path": i["path"], "width": i["width"], "height": i["height"], "name": i["name"]}
                              for i in infos], rng)
    records, expected = made if isinstance(made, tuple) else (made, {})
    for key, reason in expected.items():
        _plant(key, "grounding_check", reason, "grounding")
    with open(root / "grounding.jsonl", "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


TEXT_TOPICS = [
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The Pythagorean theorem relates the sides of a right triangle: a squared plus b squared equals c squared.",
    "A prime number has exactly two divisors, one and itself.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The mitochondria produce most of the cell's supply of adenosine triphosphate.",
    "Binary search finds an item in a sorted list in logarithmic time.",
    "The speed of light in vacuum is about three hundred thousand kilometres per second.",
    "Sorting by merging splits a list in halves, sorts each half and merges the results.",
    "Rivers carry sediment from mountains to the sea and shape their valleys over time.",
    "A derivative measures how a function changes as its input changes.",
]


def text_only(root: Path, rng: np.random.Generator) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = []
    for i in range(40):
        picks = rng.choice(len(TEXT_TOPICS), size=3, replace=False)
        body = " ".join(TEXT_TOPICS[j] for j in picks)
        rows.append({"key": f"text-{i:03d}", "text": f"Lesson {i + 1}. {body}", "lang": "en",
                     "score": round(float(rng.uniform(0.5, 1.0)), 3)})
    rows.append({"key": _plant("text-nan", "ingest", "invalid_metadata", "text"), "text": "A valid sentence with bad metadata.",
                 "lang": "en", "score": float("nan")})
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / "text.parquet")


def build(root: str | Path) -> dict[str, tuple[str, str]]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    EXPECTED.clear()
    rng = np.random.default_rng(SEED)
    caption_shards(root, rng)
    infos = conversations(root)
    grounding(root, infos, rng)
    text_only(root, rng)
    from demo_data.text_images import build_text_images
    EXPECTED.update(build_text_images(root))   # rendered text images for the OCR source
    from demo_data.videos import build_videos
    EXPECTED.update(build_videos(root))        # video clips for the video source
    from demo_data.documents import build_documents
    EXPECTED.update(build_documents(root, photos(), TEXT_TOPICS))   # interleaved documents (MINT-1T-style tar)
    (root / "EXPECTED.json").write_text(json.dumps(EXPECTED, indent=1, sort_keys=True) + "\n")
    return dict(EXPECTED)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "data/sample"
    expected = build(target)
    print(f"sample data written to {target} ({len(expected)} planted cases)")
    if "--models" in sys.argv:   # the tiny random Qwen2-VL the MLLM-scoring recipe runs offline
        from demo_data.tiny_mllm import build_sample_model
        print(f"tiny model: {build_sample_model(target)}")
