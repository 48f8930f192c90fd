"""LM worker processes and engines (see the LM service issue)."""
