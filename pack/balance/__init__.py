"""Balance: packs placed on data-parallel ranks and micro-batches so that every step costs the same."""
