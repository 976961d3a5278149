import json

import numpy as np
import pytest

from ragtune.data import load_documents
from ragtune.embeddings import Encoder, load_model
from ragtune.errors import RagtuneError
from ragtune.export import PROBE, export_onnx
from ragtune.index import Index, search_index


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch
    from conftest import build_tiny_bert
    from sentence_transformers import SentenceTransformer

    # Four layers with larger weights: the export keeps the first and last layers in float, so with the 2-layer
    # fixture int8 changed nothing, and with small random weights it agreed to 5 decimals; either way a wrong
    # figure could not be told from a right one. These weights also showed ONNX ignoring the model's length limit.
    folder = build_tiny_bert(tmp_path_factory.mktemp("export"), layers=4)
    model = SentenceTransformer(str(folder), device="cpu")
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(8)
    model.save(str(folder))
    return folder, export_onnx(folder, quantize="int8", min_cosine=0.5)


def test_onnx_matches_torch(exported):
    folder, report = exported
    assert report["onnx"]["min_cosine"] >= 0.9999
    texts = ["a new text not among the probes", "kidney", "x " * 100]
    torch_vectors = load_model(folder).encode(texts, normalize_embeddings=True)
    onnx_vectors = load_model(folder, backend="onnx").encode(texts)
    assert np.min(np.sum(torch_vectors * onnx_vectors, axis=1)) >= 0.999
    assert json.loads((folder / "onnx" / "ragtune_export.json").read_text())["onnx"]["file"].endswith("model.onnx")
    # The report's figure, checked independently of the export's own check: int8 vectors of the probe texts
    # against torch's, computed here.
    probe_torch = load_model(folder).encode(PROBE, normalize_embeddings=True)
    probe_int8 = load_model(folder, backend="onnx-int8").encode(PROBE)
    assert report["onnx-int8"]["min_cosine"] == pytest.approx(
        np.min(np.sum(probe_torch * probe_int8, axis=1)), abs=1e-4
    )


def test_index_and_search_with_the_onnx_backend(exported, tmp_path):
    from conftest import write_jsonl

    folder, _ = exported
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": PROBE[i]} for i in range(len(PROBE))])
    Index.build(
        Encoder(folder, tmp_path / "cache", backend="onnx", show_progress=False),
        load_documents(corpus),
        tmp_path / "idx",
    )
    hits = search_index(tmp_path / "idx", [PROBE[3]], 1, show_progress=False)
    assert hits[0][0].id == "d3" and hits[0][0].score > 0.999
    with pytest.raises(RagtuneError, match="backend onnx"):
        Index.load(tmp_path / "idx").check_model(Encoder(folder, tmp_path / "cache", show_progress=False))


def test_a_bad_export_is_refused(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    with pytest.raises(RagtuneError, match="agrees with torch only to cosine"):
        export_onnx(folder, min_cosine=1.01)
    assert not (folder / "onnx" / "model.onnx").exists()
    with pytest.raises(RagtuneError, match="ragtune export"):
        load_model(folder, backend="onnx")


def test_export_cli_writes_verified_files_and_refuses_bad_requests(tiny_model, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from ragtune.cli import app

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(folder)]).exit_code != 0  # no format named
    assert not (folder / "onnx").exists()
    wrong = runner.invoke(app, ["export", str(folder), "--onnx", "--quantize", "int4"])
    assert wrong.exit_code == 2 and "'int4' is not one of 'int8'" in wrong.output
    done = runner.invoke(app, ["export", str(folder), "--onnx"])
    assert done.exit_code == 0, done.output
    written = json.loads((folder / "onnx" / "ragtune_export.json").read_text())
    assert set(written) == {"onnx"} and f"min {written['onnx']['min_cosine']}" in done.output
    assert (folder / "onnx" / "model.onnx").stat().st_size > 0
