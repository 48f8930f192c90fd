"""The FacTool-inspired pipeline: corpus, retrieval (streaming BM25), encoding and reranking."""
