"""The name every `.nv-meta/dataset.yaml` mmcurate has written carries (``__module__: pack.energon_cooker``).

Why this file exists: Energon imports a dataset's factory by that module path, so datasets written before
the Energon code moved to ``pack.energon`` (and those written today: one stable name, byte-identical
shards) must keep loading. The code lives in ``pack.energon.cooker``; this module only names it.
"""
from pack.energon.cooker import PackSample, PackTaskEncoder, PackWebdataset, pack_from_parts  # noqa: F401
