"""Compare ddlm's native LLaDA and Dream networks with the families' original modeling code.

    python benchmarks/compare_originals.py --llada-code DIR [--dream-code DIR]

DIR holds a family's original ``modeling_*.py`` and ``configuration_*.py`` (the files published beside the
weights: LLaDA's modeling_llada.py + configuration_llada.py, Dream's modeling_dream.py + configuration_dream.py +
generation_utils.py).
For each family given, the script draws one tiny random model, writes it in the family's published layout
(config.json + model.safetensors), loads it with ddlm's loader and with the original classes, runs both on the
same ids (the mask token among them) and prints the largest absolute difference of their logits in float32
and float64. This RUNS THE CODE IN DIR: give only files you trust. Not run in CI; ddlm never imports it.

Measured (CPU, transformers 5.25, torch 2.13; Dream's code run with the "default" rotary entry that transformers
5 dropped put back): 0 in float32, float64 and bfloat16 for Dream; 0 in float32 and bfloat16 for LLaDA, and
~6e-7 in float64, where LLaDA's original rotates q and k in float32 (rope_full_precision casts them with
.float()) while ddlm keeps float64.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddlm.models.dream import dream_network, load_dream, qwen2_config
from ddlm.models.llada import llada_names, llada_network, llama_config, load_llada

VOCAB, MASK, LENGTH = 320, 150, 11
LLADA = {"activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
         "attention_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 64, "embedding_dropout": 0.0,
         "embedding_size": VOCAB, "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_device": "cpu",
         "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": MASK,
         "max_sequence_length": 64, "mlp_hidden_size": 96, "model_type": "llada", "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
         "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
         "scale_logits": False, "vocab_size": VOCAB, "weight_tying": False}
DREAM = {"architectures": ["DreamModel"], "attention_dropout": 0.0, "bos_token_id": 300, "eos_token_id": 300, "pad_token_id": 300,
         "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 96,
         "mask_token_id": MASK, "max_position_embeddings": 64, "model_type": "Dream", "num_attention_heads": 4,
         "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
         "tie_word_embeddings": False, "torch_dtype": "float32", "use_sliding_window": False, "vocab_size": VOCAB}


def standard_rope(config, device=None, **_) -> tuple[torch.Tensor, float]:
    """Plain rotary inverse frequencies theta^(-2i/d) for d = hidden_size / heads, and no attention scaling."""
    dim = config.hidden_size // config.num_attention_heads
    return 1.0 / config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float().to(device) / dim), 1.0


def import_original(code: Path, family: str, module: str):
    """Import ``module`` from a copy of ``code`` made a package (its files may import each other relatively or absolutely)."""
    package = Path(tempfile.mkdtemp()) / f"original_{family}"
    shutil.copytree(code, package)
    (package / "__init__.py").touch()
    sys.path[:0] = [str(package.parent), str(package)]
    return importlib.import_module(f"original_{family}.{module}")


def random_state(network: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The network's parameters after a seeded random draw (norm weights near 1, biases small), by its names."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if parameter.dim() == 1:
                parameter.copy_(("norm" in name) + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, parameter.shape[1] ** -0.5)
    return {name: p.detach().clone().contiguous() for name, p in network.named_parameters()}


def write(folder: Path, config: dict, state: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def compare(folder: Path, load, original: torch.nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Max |ours - original| of the logits per dtype: ours loaded by ddlm's ``load`` from ``folder`` in that dtype, the
    original's parameters cast to it (its buffers, such as rotary frequencies, kept as built, as a load in that dtype
    keeps them); ``original(ids)`` -> logits."""
    out = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        ours = load(folder, dtype=dtype).network
        for parameter in original.parameters():
            parameter.data = parameter.data.to(dtype)
        with torch.no_grad():
            out[str(dtype).removeprefix("torch.")] = (ours(ids, None).double() - original(ids).double()).abs().max().item()
    return out


class Logits(torch.nn.Module):
    """An original model called as ``model(ids)`` -> its logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def llada(code: Path, work: Path, ids: torch.Tensor) -> dict[str, float]:
    names = llada_names(LLADA["n_layers"], tied=False)
    theirs = {ours: published for published, ours in names.items()}
    state = {theirs[name]: t for name, t in random_state(llada_network(llama_config(LLADA))).items()}
    folder = write(work / "llada", LLADA, state)
    modeling = import_original(code, "llada", "modeling_llada")
    fields = {field.name for field in dataclasses.fields(modeling.ModelConfig)}
    original = modeling.LLaDAModel(modeling.ModelConfig(**{k: v for k, v in LLADA.items() if k in fields}), init_params=False)
    original.load_state_dict({name.removeprefix("model."): t for name, t in state.items()}, strict=True)
    return compare(folder, load_llada, Logits(original), ids)


def dream(code: Path, work: Path, ids: torch.Tensor) -> dict[str, float]:
    state = random_state(dream_network(qwen2_config(DREAM)))
    folder = write(work / "dream", DREAM, state)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ROPE_INIT_FUNCTIONS.setdefault("default", standard_rope)  # Dream's code (for transformers 4.46) looks it up; 5.x dropped it
    modeling = import_original(code, "dream", "modeling_dream")
    config = modeling.DreamConfig(**{k: v for k, v in DREAM.items() if k not in ("architectures", "model_type", "torch_dtype")})
    config._attn_implementation = "sdpa"
    original = modeling.DreamModel(config)
    original.load_state_dict(state, strict=True)
    return compare(folder, load_dream, Logits(original), ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llada-code", type=Path, help="folder of LLaDA's modeling_llada.py and configuration_llada.py")
    parser.add_argument("--dream-code", type=Path, help="folder of Dream's modeling_dream.py and configuration_dream.py")
    args = parser.parse_args(argv)
    if not (args.llada_code or args.dream_code):
        parser.error("give --llada-code and/or --dream-code")
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    ids[:, ::3] = MASK
    work = Path(tempfile.mkdtemp())
    for family, code, run in (("LLaDA", args.llada_code, llada), ("Dream", args.dream_code, dream)):
        if code is not None:
            differences = run(code, work, ids)
            print(f"{family}: max |ddlm - original| logits: " + ", ".join(f"{k} {v:.3g}" for k, v in differences.items()))


if __name__ == "__main__":
    main()
