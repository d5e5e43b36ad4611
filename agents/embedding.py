"""Dense embeddings with fastembed, offline.

:class:`FastEmbedder` implements :class:`hivemem.pool.ports.Embedder` on the ONNX export of
all-MiniLM-L6-v2 (384 dimensions, unit-length float32 rows, cosine similarity). It never
downloads: the model directory comes from ``EmbeddingSettings.model_dir`` or is assembled from
PyPI packages (:mod:`hivemem.agents.model_files`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from fastembed import TextEmbedding

from hivemem.agents.model_files import assemble_minilm_dir
from hivemem.pool.errors import EmbeddingModelMissing
from hivemem.pool.settings import EmbeddingSettings

MINILM_DIM = 384


class FastEmbedder:
    """Dense text embedder; safe to call from several threads (onnxruntime sessions are)."""

    def __init__(self, settings: EmbeddingSettings, data_dir: Path) -> None:
        # Belt and braces: even a misconfigured model name must never reach a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model_dir = settings.model_dir or assemble_minilm_dir(data_dir / "models" / "minilm-l6-v2")
        if not (model_dir / "model.onnx").exists():
            raise EmbeddingModelMissing(f"no model.onnx in {model_dir}")
        self.model_id = settings.model_name
        self.batch_size = settings.batch_size
        self._model = TextEmbedding(
            settings.model_name, specific_model_path=str(model_dir), threads=settings.threads
        )
        self.dim = MINILM_DIM

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``: an array of shape (len(texts), dim), rows of unit length, in the
        order of ``texts``. Texts are embedded shortest first, because a batch pads to its
        longest text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows = self._model.embed([texts[i] for i in order], batch_size=self.batch_size)
        embedded = np.empty((len(texts), self.dim), dtype=np.float32)
        for position, row in zip(order, rows, strict=True):
            embedded[position] = row
        return embedded

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one query: a unit-length vector of shape (dim,)."""
        return np.asarray(next(iter(self._model.query_embed(text))), dtype=np.float32)


_shared: dict[tuple[EmbeddingSettings, Path], FastEmbedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(settings: EmbeddingSettings, data_dir: Path) -> FastEmbedder:
    """One FastEmbedder per (settings, data_dir) in this process: loading costs ~0.5 s and
    ~100 MB, and an embedder is safe to share between memories and threads."""
    key = (settings, data_dir.resolve())
    with _shared_lock:
        if key not in _shared:
            _shared[key] = FastEmbedder(settings, data_dir)
        return _shared[key]
