"""Sentence embeddings for semantic prompt dedup (sentence-transformers)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from workers.runtime import pick_device, setup_worker, with_columns


class PromptEmbedder:
    """Ray Data actor: adds `embedding` (unit-norm float32 vector) for `prompt`."""

    input_columns = ("prompt",)
    output_columns = ("embedding",)

    def __init__(self, model_path: str, num_threads: int = 1):
        setup_worker(num_threads)
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path, device=pick_device())

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.model.encode(batch.column("prompt").to_pylist(), normalize_embeddings=True,
                                    convert_to_numpy=True, batch_size=64, show_progress_bar=False).astype(np.float32)
        dim = vectors.shape[1]
        return with_columns(batch, embedding=pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim))
