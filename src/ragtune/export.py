"""Export a model folder to ONNX (fp32, optionally int8) and load it back, without optimum.

Why not sentence-transformers' own ONNX backend: it needs optimum-onnx, which downgrades transformers to 4.x and
breaks datasets 5.x. Here the transformer is exported with `torch.onnx.export` and run with onnxruntime; pooling and
normalisation are done in numpy as the folder's `1_Pooling/config.json` says. Every export is checked against the
torch model on probe texts and refused below a cosine threshold, so a bad export never reaches an index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.embeddings import resolve_model
from ragtune.errors import RagtuneError
from ragtune.outputs import write_json

FILES = {"onnx": "model.onnx", "onnx-int8": "model_qint8.onnx"}
PROBE = [
    "Does age influence growth hormone response to exercise?",
    "What are the treatments for Adult Acute Lymphoblastic Leukemia ?",
    "0-dimensional biomaterials lack inductive properties.",
    "Obesity may be associated with lower prostate specific antigen through hemodilution. We examined the "
    "relationship between body mass index and prostate specific antigen by age in men without prostate cancer.",
    "kidney",
    "How many people are affected by Marfan syndrome? This condition occurs in about 1 in 5,000 people worldwide.",
    "Is there a relationship between sleep duration and weight gain in adolescents followed for five years?",
    "The heart pumps blood through the arteries, veins and capillaries of the body.",
]


def _onnx_packages():
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise RagtuneError("ONNX needs the onnx extra: pip install 'ragtune[onnx]'") from err


class OnnxModel:
    """What ragtune uses of a SentenceTransformer (encode, tokenizer, max_seq_length), backed by onnxruntime."""

    def __init__(self, model_dir: str | Path, variant: str = "onnx"):
        _onnx_packages()
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.folder = Path(model_dir)
        path = self.folder / "onnx" / FILES[variant]
        if not path.exists():
            flag = " --quantize int8" if variant == "onnx-int8" else ""
            raise RagtuneError(f"{path} not found: run `ragtune export {self.folder} --onnx{flag}` first")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        config = json.loads((self.folder / "sentence_bert_config.json").read_text())
        self.max_seq_length = int(config.get("max_seq_length") or 512)
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


def export_onnx(model: str | Path, quantize: str | None = None, min_cosine: float = 0.99) -> dict[str, Any]:
    """Write `<model>/onnx/model.onnx` (and `model_qint8.onnx`), verified against torch on probe texts."""
    _onnx_packages()
    import torch

    from ragtune.embeddings import load_model

    folder = Path(resolve_model(model))
    if not folder.is_dir():
        raise RagtuneError(f"export needs a local model folder, got {model}")
    st = load_model(folder, device="cpu")
    transformer = st[0].auto_model.eval()

    class _Wrapped(torch.nn.Module):  # keyword call: the model's positional order differs across versions
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    sample = st.tokenizer(PROBE[:2], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    out_dir = folder / "onnx"
    out_dir.mkdir(exist_ok=True)
    fp32 = out_dir / FILES["onnx"]
    with torch.no_grad():
        torch.onnx.export(
            _Wrapped(transformer),
            tuple(sample[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
        )
    reference = st.encode(PROBE, normalize_embeddings=True)
    report = {"onnx": _verify(folder, "onnx", reference, min_cosine)}
    if quantize == "int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel weights on the matrix products only, and the first and last layers kept in float: measured on
        # all-MiniLM-L6-v2, quantizing everything gave cosine ~0.93 to torch, this ~0.99.
        layers = sorted(
            {n.name.split("/layer.")[1].split("/")[0] for n in onnx.load(str(fp32)).graph.node if "/layer." in n.name},
            key=int,
        )
        keep = {f"/layer.{layers[0]}/", f"/layer.{layers[-1]}/"} if layers else set()
        exclude = [
            n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "MatMul" and any(k in n.name for k in keep)
        ]
        quantize_dynamic(
            str(fp32),
            str(out_dir / FILES["onnx-int8"]),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=exclude,
        )
        report["onnx-int8"] = _verify(folder, "onnx-int8", reference, min_cosine)
    write_json(out_dir / "ragtune_export.json", report)
    return report


def _verify(folder: Path, variant: str, reference: np.ndarray, min_cosine: float) -> dict[str, Any]:
    got = OnnxModel(folder, variant).encode(PROBE)
    cosines = np.sum(got * reference, axis=1)
    result = {
        "file": str(folder / "onnx" / FILES[variant]),
        "min_cosine": round(float(cosines.min()), 5),
        "mean_cosine": round(float(cosines.mean()), 5),
    }
    if cosines.min() < min_cosine:
        (folder / "onnx" / FILES[variant]).unlink()
        raise RagtuneError(
            f"{variant} export agrees with torch only to cosine {cosines.min():.4f} on the probe texts "
            f"(needed {min_cosine}); the file was removed. Try without quantization or lower "
            "--min-cosine knowingly."
        )
    return result
