"""Export a model folder to ONNX (fp32, optionally int8) and load it back, without optimum.

Why not sentence-transformers' own ONNX backend: it needs optimum-onnx, which downgrades transformers to 4.x and
breaks datasets 5.x. Here the transformer is exported with `torch.onnx.export` and run with onnxruntime; pooling and
normalisation are done in numpy as the folder's `1_Pooling/config.json` says. Every export is checked against the
torch model on probe texts and refused below a cosine threshold, so a bad export never reaches an index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ragtune.embeddings import resolve_model
from ragtune.errors import RagtuneError
from ragtune.onnx_backend import FILES, OnnxModel, onnx_packages
from ragtune.outputs import write_json

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


def export_onnx(model: str | Path, quantize: str | None = None, min_cosine: float = 0.99) -> dict[str, Any]:
    """Write `<model>/onnx/model.onnx` (and `model_qint8.onnx`), verified against torch on probe texts."""
    onnx_packages()
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
