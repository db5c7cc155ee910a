"""Interleaved image-text documents (OBELICS, MINT-1T): the record's segments, per-image removal, and
the document rules. Documents flow through the same stage contract and accounting as captions."""
