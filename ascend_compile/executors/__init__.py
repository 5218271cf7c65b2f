"""How a rewritten graph runs: ``inductor`` (fuse the rest) or ``fx`` (run the aten graph as is)."""
