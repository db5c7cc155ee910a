"""Megatron-Energon: the `.nv-meta` a rank directory needs, its index, and the task encoder (cooker)."""
