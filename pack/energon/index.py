"""Energon's key index ``.nv-meta/index.sqlite`` for shards folders, where a lookup by sample key needs it:
``python -m pack.energon.index out/run/shards``.

Why a separate step and not part of the shards stage (pack.energon.meta says more): Energon reads the
index only to find samples by key (metadataset joins, auxiliary file stores, ``SqliteITarEntryReader``),
never to load in order or to resume; and SQLite's bytes depend on the SQLite library, which would break
"same recipe and seed, same bytes". The rows are the ones ``energon prepare`` writes (tests compare
them): per pack its key, tar, index in the tar and byte range; per member its name after the key and
its data's byte range. They are written with Energon's own ``SqliteIndexWriter``, so the schema is the
installed Energon's.
"""
from __future__ import annotations

import argparse
import json
import os
import tarfile
from typing import Iterator

from pack import packformat as F
from pack.energon.meta import INFO_NAME, META_DIR
from pack.shards.tario import split_member_name

INDEX_NAME = "index.sqlite"           # megatron.energon.flavors.webdataset.config.INDEX_SQLITE_FILENAME


def energon_folders(shards_dir: str) -> list[str]:
    """The folders of `shards_dir` that carry ``.nv-meta`` (every rank folder, and ``leftover/``)."""
    manifest = F.load_manifest(shards_dir)
    names = [r["dir"] for r in manifest["ranks"]] + [F.LEFTOVER_DIR]
    return [os.path.join(shards_dir, n) for n in names if os.path.isfile(os.path.join(shards_dir, n, META_DIR, INFO_NAME))]


def tar_rows(path: str, tar_id: int) -> Iterator[tuple[str, tuple]]:
    """("sample", (tar_id, key, index, byte_offset, byte_size)) and ("part", (tar_id, index, part,
    data_offset, size)) for one tar, in archive order, reading headers only."""
    with tarfile.open(path, mode="r:") as tar:
        key, index, start = None, -1, 0
        for info in tar:
            base, part = split_member_name(info.name)
            if base != key:
                if key is not None:
                    yield "sample", (tar_id, key, index, start, info.offset - start)
                key, index, start = base, index + 1, info.offset
            yield "part", (tar_id, index, part, info.offset_data, info.size)
        if key is not None:
            yield "sample", (tar_id, key, index, start, tar.offset - start)


def write_index(folder: str) -> str:
    """Write ``folder/.nv-meta/index.sqlite`` (replacing one that exists); returns its path."""
    from megatron.energon.epathlib import EPath
    from megatron.energon.flavors.webdataset.indexing import SqliteIndexWriter
    from megatron.energon.flavors.webdataset.prepare import IndexSample, IndexSamplePart
    with open(os.path.join(folder, META_DIR, INFO_NAME)) as fh:
        tars = list(json.load(fh)["shard_counts"])           # Energon's tar_file_id: the order of .info.json
    target = os.path.join(folder, META_DIR, INDEX_NAME)
    tmp = target + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    writer = SqliteIndexWriter(EPath(tmp))
    try:
        for tar_id, name in enumerate(tars):
            samples, parts = [], []
            for kind, row in tar_rows(os.path.join(folder, name), tar_id):
                if kind == "sample":
                    samples.append(IndexSample(tar_file_id=row[0], sample_key=row[1], sample_index=row[2],
                                               byte_offset=row[3], byte_size=row[4]))
                else:
                    parts.append(IndexSamplePart(tar_file_id=row[0], sample_index=row[1], part_name=row[2],
                                                 content_byte_offset=row[3], content_byte_size=row[4]))
            writer.append_samples(samples)
            writer.append_parts(parts)
    finally:
        writer.close()
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write Energon's index.sqlite into every folder of a shards directory.")
    ap.add_argument("shards", help="the shards folder (with manifest.json)")
    for path in (write_index(f) for f in energon_folders(ap.parse_args(argv).shards)):
        print(path)


if __name__ == "__main__":
    main()
