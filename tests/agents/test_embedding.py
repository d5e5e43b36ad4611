"""The offline embedders: dense MiniLM from PyPI-shipped files, sparse BM25."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hivemem.agents.embedding import FastEmbedder, shared_embedder
from hivemem.agents.sparse import Bm25Encoder
from hivemem.pool.errors import EmbeddingModelMissing
from hivemem.pool.settings import EmbeddingSettings, HivememSettings


def test_dense_vectors_are_unit_length_and_semantic(settings: HivememSettings) -> None:
    """Document rows are unit length in input order; related texts are closer than unrelated."""
    embedder = shared_embedder(settings.embedding, settings.data_dir)
    texts = [
        "a cat sleeps on the sofa",
        "quarterly revenue grew by ten percent",
        "a kitten naps on the couch",
    ]
    rows = embedder.embed_documents(texts)
    assert rows.shape == (3, 384)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)
    assert rows[0] @ rows[2] > rows[0] @ rows[1] + 0.3
    single = embedder.embed_documents([texts[1]])[0]
    assert np.allclose(single, rows[1], atol=1e-5)
    query = embedder.embed_query("where is the cat")
    assert int(np.argmax(rows @ query)) in (0, 2)
    assert embedder.embed_documents([]).shape == (0, 384)


def test_the_model_loads_with_no_network(tmp_path: Path, settings: HivememSettings) -> None:
    """In a fresh process with the hub disabled and every proxy pointing nowhere, the embedder
    still loads and embeds (nothing is downloaded at run time)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HIVEMEM_DATA_DIR": str(tmp_path / "fresh"),
    }
    code = (
        "from hivemem.agents.embedding import FastEmbedder\n"
        "from hivemem.pool.settings import HivememSettings\n"
        "s = HivememSettings()\n"
        "print(FastEmbedder(s.embedding, s.data_dir).embed_query('hello').shape)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(384,)"


def test_a_missing_model_directory_is_a_typed_error(tmp_path: Path) -> None:
    """A model_dir without model files raises EmbeddingModelMissing."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingModelMissing):
        FastEmbedder(EmbeddingSettings(model_dir=tmp_path / "empty"), tmp_path)


def test_bm25_stems_and_drops_stop_words() -> None:
    """Inflections share a term; stop words produce none; queries weigh each term once."""
    bm25 = Bm25Encoder()
    running, runs = bm25.encode_documents(["running", "runs"])
    assert running.indices == runs.indices
    assert bm25.encode_documents(["the and of"])[0].indices == []
    query = bm25.encode_query("running running shoes")
    assert len(query.indices) == 2
    assert set(query.values) == {1.0}
    assert query.indices == sorted(query.indices)
