"""Nothing unpickles untrusted files: a pickle whose ``__reduce__`` creates a marker file never runs.

Model directories (``DDLMForDiffusion.from_pretrained``, ``ddlm.evaluation.load_model``,
``DiffusionPipeline.from_pretrained``, the CLI) read pickled ``pytorch_model.bin`` weights only with
``torch.load(weights_only=True)`` and not at all beside ``model.safetensors``; ``ddlm convert sedd``
does the same (its refusals of pickled hub and run checkpoints are in test_convert.py); tokenizer
directories are read by transformers 5 without any unpickling (JSON, text, protobuf).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.auto import tokenization_auto

from ddlm import DDLMConfig, DDLMForDiffusion
from ddlm.cli import main
from ddlm.evaluation import load_model
from ddlm.pipeline import DiffusionPipeline
from test_convert import SEDDLayout, num_outputs, sedd_config, write_hub_dir, write_run

VOCAB = 10
LOADERS = {
    "DDLMForDiffusion.from_pretrained": DDLMForDiffusion.from_pretrained,
    "load_model": load_model,
    "DiffusionPipeline.from_pretrained": DiffusionPipeline.from_pretrained,
}
REFUSED = r"refused .*pytorch_model\.bin: it is not a plain tensor checkpoint"


class MarkerPayload:
    """Unpickles as ``open(path, "w")``: running it creates the marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "payload-ran"


@pytest.fixture
def model_dir(tmp_path):
    """A tiny saved model (safetensors) with a word-level tokenizer of VOCAB tokens beside it."""
    path = tmp_path / "model"
    DDLMForDiffusion(DDLMConfig.from_preset("tiny", vocab_size=VOCAB, max_position_embeddings=16)).save_pretrained(path)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(path)
    return path


def add_payload_bin(path, marker, keep_safetensors: bool):
    """Write the model's weights plus a payload as pytorch_model.bin; returns that file."""
    state = DDLMForDiffusion.from_pretrained(path).state_dict()
    if not keep_safetensors:
        (path / "model.safetensors").unlink()
    torch.save({**state, "extra": MarkerPayload(marker)}, path / "pytorch_model.bin")
    return path / "pytorch_model.bin"


@pytest.mark.parametrize("loader", LOADERS)
def test_a_payload_bin_is_refused_naming_the_file(model_dir, marker, loader):
    weights = add_payload_bin(model_dir, marker, keep_safetensors=False)
    with pytest.raises(ValueError, match=REFUSED) as error:
        LOADERS[loader](model_dir)
    assert str(weights) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", LOADERS)
def test_a_payload_bin_beside_safetensors_is_never_read(model_dir, marker, loader):
    add_payload_bin(model_dir, marker, keep_safetensors=True)
    LOADERS[loader](model_dir)
    assert not marker.exists()


def test_the_payload_is_live_and_weights_only_false_is_refused(model_dir, marker):
    weights = add_payload_bin(model_dir, marker, keep_safetensors=False)
    with pytest.raises(ValueError, match="weights_only=False is refused"):
        DDLMForDiffusion.from_pretrained(model_dir, weights_only=False)
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # what an unsafe load would do: run it
    assert marker.exists()


def test_a_plain_tensor_bin_still_loads(model_dir):
    model = DDLMForDiffusion.from_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    loaded = DDLMForDiffusion.from_pretrained(model_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_cli_refuses_a_payload_bin_in_one_line(model_dir, marker):
    weights = add_payload_bin(model_dir, marker, keep_safetensors=False)
    result = subprocess.run([sys.executable, "-m", "ddlm", "sample", str(model_dir), "--length", "4", "--steps", "2", "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ddlm sample: error: refused") and str(weights) in line
    assert not marker.exists()


@pytest.mark.parametrize("source", ["hub dir: pytorch_model.bin beside model.safetensors", "run .pth"])
def test_convert_sedd_never_runs_a_payload(tmp_path, marker, capsys, source):
    """Beside safetensors a payload .bin is not read; a payload training checkpoint is one line of error
    (test_convert.py covers the in-process refusal of payload .bin and .pth files)."""
    config = sedd_config("absorb-loglinear")
    layout = SEDDLayout(num_outputs(config), seed=1)
    if source.startswith("hub"):
        path = write_hub_dir(tmp_path / "sedd", config, layout.state_dict(), "safetensors")
        torch.save({"extra": MarkerPayload(marker)}, path / "pytorch_model.bin")
        main(["convert", "sedd", str(path), str(tmp_path / "out")])
        assert (tmp_path / "out" / "model.safetensors").is_file()
    else:
        path = write_run(tmp_path / "run", config, layout, layout)
        torch.save({**torch.load(path, weights_only=True), "step": MarkerPayload(marker)}, path)
        with pytest.raises(SystemExit) as exit_:
            main(["convert", "sedd", str(path), str(tmp_path / "out")])
        assert exit_.value.code == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert f"refused {path}: it is not a plain tensor checkpoint" in line
    assert not marker.exists()


def tokenizer_classes():
    """Every tokenizer class AutoTokenizer maps to whose backend is installed, with the files it reads."""
    names = {name for value in tokenization_auto.TOKENIZER_MAPPING_NAMES.values()
             for name in (value if isinstance(value, (tuple, list)) else (value,)) if name}
    names |= {"TokenizersBackend", "PreTrainedTokenizerFast"}  # what ddlm saves, and its older name
    found = {}
    for name in sorted(names):
        try:
            cls = tokenization_auto.tokenizer_class_from_name(name)
            files = set((getattr(cls, "vocab_files_names", None) or {}).values()) if cls is not None else None
        except ImportError:  # a backend (sentencepiece, sacremoses, ...) that is not installed
            continue
        if files is not None:
            found[name] = files
    return found


def test_no_tokenizer_class_unpickles_its_files(tmp_path, marker):
    """Every file any tokenizer class reads (and likely pickle names) holds a payload; loading may fail, never run it."""
    classes = tokenizer_classes()
    assert {"TokenizersBackend", "GPT2Tokenizer", "BertTokenizer", "LlamaTokenizer", "T5Tokenizer"} <= set(classes)
    payload = pickle.dumps(MarkerPayload(marker))
    extra = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.pkl", "vocab.pkl", "tokenizer.bin", "pytorch_model.bin"}
    for name, files in classes.items():
        directory = tmp_path / name
        directory.mkdir()
        for file in (files | extra) - {"tokenizer_config.json"}:
            (directory / file).write_bytes(payload)
        (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": name}))
        try:
            AutoTokenizer.from_pretrained(directory)
        except Exception:  # refusing the files in any way is fine; running them is not
            pass
        assert not marker.exists(), f"{name} ran a pickled payload"


def test_load_model_with_a_payload_tokenizer_names_it(model_dir, marker):
    (model_dir / "tokenizer.json").write_bytes(pickle.dumps(MarkerPayload(marker)))
    with pytest.raises(ValueError, match=rf"cannot load the tokenizer saved in {model_dir} \(tokenizer.json"):
        load_model(model_dir)
    assert not marker.exists()
