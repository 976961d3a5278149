"""Run an exported model with onnxruntime: what ragtune uses of a SentenceTransformer, without torch at query time.

`ragtune.export` writes the files; this module only reads them, so loading a model (`embeddings.load_model`) never
imports the exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import RagtuneError

FILES = {"onnx": "model.onnx", "onnx-int8": "model_qint8.onnx"}


def onnx_packages():
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise RagtuneError("ONNX needs the onnx extra: pip install 'ragtune[onnx]'") from err


class OnnxModel:
    """What ragtune uses of a SentenceTransformer (encode, tokenizer, max_seq_length), backed by onnxruntime."""

    def __init__(self, model_dir: str | Path, variant: str = "onnx"):
        onnx_packages()
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(model_dir)
        path = self.folder / "onnx" / FILES[variant]
        if not path.exists():
            flag = " --quantize int8" if variant == "onnx-int8" else ""
            raise RagtuneError(f"{path} not found: run `ragtune export {self.folder} --onnx{flag}` first")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        config = json.loads((self.folder / "sentence_bert_config.json").read_text())
        # sentence-transformers 5 saves the limit as the tokenizer's model_max_length, older releases in this file;
        # reading only the file let long texts run past the limit torch applies (different vectors).
        limit = config.get("max_seq_length") or self.tokenizer.model_max_length
        self.max_seq_length = int(limit) if limit and limit < 1_000_000 else 512
        pooling = self.folder / "1_Pooling" / "config.json"
        pool = json.loads(pooling.read_text()) if pooling.exists() else {"pooling_mode_mean_tokens": True}
        self.pooling = (
            "cls" if pool.get("pooling_mode_cls_token") else "max" if pool.get("pooling_mode_max_tokens") else "mean"
        )
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def get_embedding_dimension(self) -> int:
        return int(self.encode(["x"]).shape[1])

    def encode(self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts])  # similar lengths together: less padding
        out = np.empty((len(texts), 0), dtype=np.float32)
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start : start + batch_size]]
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
            )
            feed = {k: enc[k].astype(np.int64) for k in self.inputs if k in enc}
            hidden = self.session.run(None, feed)[0]
            chunks.append(_pool(hidden, enc["attention_mask"], self.pooling))
        if chunks:
            out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
            out[order] = np.concatenate(chunks)
        if normalize_embeddings and len(out):
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        return hidden[:, 0].astype(np.float32)
    m = mask[..., None].astype(np.float32)
    if mode == "max":
        return np.where(m > 0, hidden, -1e9).max(axis=1).astype(np.float32)
    return ((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)).astype(np.float32)
