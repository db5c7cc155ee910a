"""The engine: runs a chain of stages over rows — the executor protocol and factory (inline or Ray Data), Ray
file I/O, fused chains, progress counters and heap trimming. The runner above it keeps resume, markers and
the report."""
