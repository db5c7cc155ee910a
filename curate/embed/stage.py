"""The ``embed`` stage: one embedding per sample, of its images or of its text, into a column.

A model stage like ``clip_score``: an actor pool (one actor per GPU, one on CPU), the model loaded
once per actor in ``setup()`` on the device ``device`` names (CUDA, Ascend NPU, else CPU), images
read, decoded and resized by a thread pool that runs ahead of the model, which takes them in
sub-batches of ``batch_size``. The clustering stages (``cluster``, ``cluster_sample``,
``semantic_dedup``) all read the one column this stage writes.

* ``modality: image``: a sample's images are embedded and their unit vectors averaged (then
  re-normalised); samples without an image get a null embedding and pass. Unreadable images are
  quarantined, undecodable ones rejected, with ``clip_score``'s reasons.
* ``modality: text``: the caption, else the conversation's first answer (``conversation_text``), as
  ``clip_score`` picks it; each distinct text is embedded once; samples without text get null.

The column is a fixed-size list (``dim`` wide) of float16 (default: half the bytes; the cosine of
two unit float16 vectors is within ~1e-3 of float32's) or float32.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import pyarrow as pa

from curate.media import images as I
from curate.cluster.columns import EMBEDDING, embedding_type
from curate.embed.backends import build_embedder, embedding_dim
from curate.base import Drop, split_drops
from curate.media.decode import read_decoded
from curate.scoring.device import DEVICE_CHOICES
from curate.scoring.stages import sample_text, sub_batches
from curate.base import BatchResult, Resources, Stage, register


@register
class Embed(Stage):
    name: ClassVar[str] = "embed"
    description: ClassVar[str] = ("Image or text embeddings into a fixed-size-list column (offline: EfficientNet-Lite0 "
                                  "penultimate features / MiniLM; production: CLIP, SigLIP, open_clip).")
    requires: ClassVar[tuple[str, ...]] = ("images", "text", "conversations", "category")
    adds: ClassVar[Mapping[str, pa.DataType]] = {EMBEDDING: embedding_type(1280)}
    resources: ClassVar[Resources] = Resources(cpus=1, gpus=0, batch_size=256, kind="actor", concurrency=1)

    @dataclass
    class Config:
        modality: Literal["image", "text"] = field(default="image", metadata={"doc": "Embed the images or the text."})
        backend: Literal["offline", "hf_clip", "hf_siglip", "open_clip"] = field(default="offline", metadata={
            "doc": "offline: EfficientNet-Lite0 penultimate features (image) / all-MiniLM-L6-v2 (text), shipped "
                   "weights; hf_clip / hf_siglip: a local transformers directory; open_clip: model_name + checkpoint."})
        model_path: str | None = field(default=None, metadata={"doc": "Local model directory or checkpoint file."})
        model_name: str | None = field(default=None, metadata={"doc": "open_clip architecture, e.g. ViT-B-32."})
        dim: int | None = field(default=None, metadata={
            "doc": "Embedding width; None: known for offline, read from config.json for hf_* (open_clip: required)."})
        column: str = field(default=EMBEDDING, metadata={"doc": "Output column name."})
        store_dtype: Literal["float16", "float32"] = field(default="float16", metadata={"doc": "Column precision."})
        categories: list[str] | None = field(default=None, metadata={"doc": "Embed only these categories; None: all."})
        batch_size: int = field(default=64, metadata={"doc": "Images or texts per model forward."})
        device: str = field(default="auto", metadata={"doc": "auto (CUDA, then Ascend NPU, then CPU), cuda, npu, cpu."})
        dtype: Literal["auto", "float32", "float16", "bfloat16"] = field(
            default="auto", metadata={"doc": "Model precision; auto: float16 on accelerators, float32 on CPU."})
        decode_threads: int | None = field(default=None, metadata={
            "doc": "Threads reading and decoding images; None: one per core (max 32)."})
        conversation_text: Literal["first_answer", "first_exchange"] = field(
            default="first_answer", metadata={"doc": "text modality: which text of a conversation sample."})
        max_pixels: int = field(default=I.MAX_DECODE_PIXELS, metadata={"doc": "Refuse to decode larger images."})
        gpus_per_actor: float | None = field(default=None, metadata={
            "doc": "GPUs each actor asks Ray for; None: 1 when the driver sees CUDA, else 0."})
        actors: int | None = field(default=None, metadata={"doc": "Model actors; None: one per GPU, 1 on CPU."})
        cpu_threads: int | None = field(default=None, metadata={"doc": "torch threads of a CPU actor; None: all cores."})

    def __init__(self, config: Any = None, context: Any = None, **settings: Any):
        super().__init__(config, context, **settings)
        c = self.config
        self.dim = embedding_dim(c.backend, c.modality, c.model_path, c.dim)
        self.adds = {c.column: embedding_type(self.dim, c.store_dtype)}
        self.resources = actor_resources(c.device, c.gpus_per_actor, c.actors, type(self).resources.batch_size)
        self.embedder: Any = None

    def validate_config(self) -> None:
        c = self.config
        if c.backend != "offline" and not c.model_path:
            raise ValueError(f"model_path: required for backend {c.backend}")
        if c.backend == "open_clip" and not c.model_name:
            raise ValueError("model_name: required for backend open_clip (e.g. ViT-B-32)")
        if c.device.split(":", 1)[0] not in DEVICE_CHOICES:
            raise ValueError(f"device: expected one of {DEVICE_CHOICES}, got {c.device!r}")
        for name in ("batch_size", "max_pixels"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(c, name)}")
        for name in ("dim", "actors", "cpu_threads", "decode_threads"):
            value = getattr(c, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")

    @property
    def on_cpu(self) -> bool:
        return self.embedder is None or str(self.embedder.device).startswith("cpu")

    @property
    def decode_threads(self) -> int:
        """Every core (max 32): with an accelerator decoding runs alongside the model; on CPU the
        two alternate (see _embed_images), so each phase may use all cores."""
        return self.config.decode_threads or min(32, os.cpu_count() or 1)

    def setup(self) -> None:
        from curate.scoring.device import pick_device, resolve_dtype
        c = self.config
        device = pick_device(c.device)
        if device == "cpu":
            import torch
            torch.set_num_threads(c.cpu_threads or os.cpu_count() or 1)
        self.embedder = build_embedder(c.backend, c.modality, device, resolve_dtype(c.dtype, device), self.dim,
                                       c.model_path, c.model_name, c.batch_size)
        if int(self.embedder.dim) != self.dim:
            raise ValueError(f"dim: the model gives {self.embedder.dim}-d embeddings, the column is {self.dim}-d")

    # --- per batch ------------------------------------------------------------------------------
    def process_batch(self, batch: pa.Table) -> BatchResult:
        self.ensure_setup()
        c = self.config
        n = batch.num_rows
        cats = batch.column("category").to_pylist()
        wanted = [c.categories is None or cat in c.categories for cat in cats]
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        has = np.zeros(n, dtype=bool)
        drops: list[Drop | None] = [None] * n
        if c.modality == "image":
            refs = batch.column("images").to_pylist()
            self._embed_images([i for i in range(n) if wanted[i] and refs[i]], refs, vectors, has, drops)
        else:
            texts = [sample_text(t, conv, c.conversation_text) if ok else None for t, conv, ok in
                     zip(batch.column("text").to_pylist(), batch.column("conversations").to_pylist(), wanted)]
            self._embed_texts(texts, vectors, has)
        col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(c.store_dtype).reshape(-1)), self.dim,
                                                mask=pa.array(~has))
        idx = batch.schema.get_field_index(c.column)
        batch = batch.set_column(idx, c.column, col) if idx >= 0 else batch.append_column(c.column, col)
        return split_drops(batch, drops)

    def _embed_texts(self, texts: list[str | None], vectors: np.ndarray, has: np.ndarray) -> None:
        unique = sorted({t for t in texts if t})
        if not unique:
            return
        emb = np.concatenate([self.embedder.embed_texts(unique[s:e]) for s, e in
                              ((s, min(len(unique), s + self.config.batch_size))
                               for s in range(0, len(unique), self.config.batch_size))])
        at = {t: j for j, t in enumerate(unique)}
        for i, t in enumerate(texts):
            if t:
                vectors[i], has[i] = emb[at[t]], True

    def _prepare(self, ref: Mapping[str, Any]) -> np.ndarray | Drop:
        """Read + decode + resize one image (in a decode thread); a bad image becomes a Drop."""
        im = read_decoded(ref, self.config.max_pixels, self.embedder.transform)
        return im if isinstance(im, Drop) else self.embedder.prepare_image(im)

    def _embed_images(self, rows: list[int], refs: list[Any], vectors: np.ndarray, has: np.ndarray,
                      drops: list[Drop | None]) -> None:
        """Sum of image embeddings per row, then re-normalised.

        With an accelerator, decoding runs ahead of the model (FIFO queue, sub-batches as they
        complete). On CPU the batch is decoded first, then embedded: a CPU model already uses every
        core, and decode threads running beside it preempt torch's OpenMP workers, which then wait
        on each other (measured on 2 cores: 0.62 of the bare forward overlapped, see bench_cluster)."""
        items = [(i, ref) for i in rows for ref in refs[i]]
        if not items:
            return
        with ThreadPoolExecutor(self.decode_threads) as pool:
            futures = [pool.submit(self._prepare, ref) for _, ref in items]   # FIFO: decoding runs ahead
            if self.on_cpu:
                wait(futures)
            bs = self.config.batch_size
            bounds = ([(s, min(len(items), s + bs)) for s in range(0, len(items), bs)] if self.on_cpu
                      else sub_batches(len(items), bs))      # short first batch only pays off when overlapping
            for start, stop in bounds:
                prepared = [f.result() for f in futures[start:stop]]
                ok = [(row, arr) for (row, _), arr in zip(items[start:stop], prepared) if not isinstance(arr, Drop)]
                for (row, _), arr in zip(items[start:stop], prepared):
                    if isinstance(arr, Drop) and drops[row] is None:
                        drops[row] = arr
                if ok:
                    emb = self.embedder.embed_images([arr for _, arr in ok])
                    for (row, _), e in zip(ok, emb):
                        vectors[row] += e
                        has[row] = True
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        for i, d in enumerate(drops):
            if d is not None:
                has[i] = False
                vectors[i] = 0.0


def actor_resources(device: str, gpus_per_actor: float | None, actors: int | None, batch_size: int) -> Resources:
    """As clip_score sizes its pool: one GPU per actor and one actor per GPU when CUDA is visible,
    else a single CPU actor (the CPU model already uses every core)."""
    gpus = gpus_per_actor
    if gpus is None:
        gpus = 0.0
        if device.split(":")[0] in ("auto", "cuda"):
            from curate.scoring.device import cuda_device_count
            gpus = 1.0 if cuda_device_count() > 0 else 0.0
    if actors is None:
        from curate.scoring.device import cuda_device_count
        actors = max(1, int(cuda_device_count() // gpus)) if gpus > 0 else 1
    return Resources(cpus=1, gpus=gpus, batch_size=batch_size, kind="actor", concurrency=actors)
