"""Archive indexing: a SQLite catalog of slices, a FAISS store of their anatomy vectors, a manifest, the pipeline."""
