"""Rule-based quality filters that need no model: ``image_filter`` and ``text_filter``.

Both read their thresholds from a named preset (``default``, ``datacomp_basic``, ``lenient``) that
single recipe settings override; every rejection carries a short reason code (``image:blank``,
``text:tail_loop``...) and a detail with the measured value.
"""
