"""Compare ddlm's LLaDA, Dream and MDLM networks with the families' original code, run from given folders.

    OMP_NUM_THREADS=1 python benchmarks/compare_originals.py [--llada-code DIR] [--dream-code DIR] [--mdlm-code DIR] \
        [--source FAMILY=TEXT ...]
    python benchmarks/compare_originals.py --report-only   # the table again from compare_originals.json

--llada-code / --dream-code: a folder of the family's original ``modeling_*.py`` and ``configuration_*.py`` (the
files published beside the weights: LLaDA's modeling_llada.py + configuration_llada.py, Dream's modeling_dream.py +
configuration_dream.py + generation_utils.py). For each, the script draws one tiny random model, writes it in the
family's published layout (config.json + model.safetensors), loads it with ddlm's loader and with the original
classes, runs both on the same ids (the mask token among them) and records the largest absolute difference of their
logits in float32, float64 and bfloat16.

--mdlm-code: a checkout of github.com/kuleshov-group/mdlm (needs einops and omegaconf, which its models/dit.py
imports). The script builds a tiny random network with MDLM's own ``models/dit.py`` DIT (config through omegaconf, as
MDLM passes it), writes it in the hub layout of kuleshov-group/mdlm-owt and as a Lightning ``.ckpt`` (EMA weights,
the omegaconf config pickled in ``hyper_parameters``, read by ddlm's inert unpickler), converts both with ddlm and
records, with and without time conditioning, the largest absolute difference of the SUBS log-probabilities
log p(x0 | x_t) (MDLM's ``Diffusion.forward`` and ``_subs_parameterization``) and of the continuous-time NELBO
integrand per sequence (MDLM's ``_forward_pass_diffusion`` against ddlm's ``noise.rate(t) * losses.dse(...)`` on
the t and x_t MDLM drew). Those ``Diffusion`` methods are run from the source of ``diffusion.py`` (its other imports,
Lightning, hydra, its data loaders, are not needed and not imported) on an object holding the attributes they read.
flash_attn's kernels need CUDA and half precision, and it does not install without CUDA: the script always puts in a
stand-in module (this comparison runs float32 on the CPU) implementing the two functions dit.py calls (``layers.rotary.apply_rotary_emb_qkv_``: the non-interleaved rotary rotation of q and k in
place; ``flash_attn_interface.flash_attn_varlen_qkvpacked_func``: softmax attention per sequence of ``cu_seqlens``,
scale 1/sqrt(d)) and says so in the report. MDLM's network does not run in float64 (its sigma features are float32
before a float64 linear layer); the report says so where it fails.

The table goes through benchmarks/harness.py to benchmarks/results/compare_originals.{json,md}, with each family's
source (``--source FAMILY=TEXT``, else the folder) and the SHA-256 of the files run. This RUNS THE CODE IN THE
FOLDERS: give only files you trust. Not run in CI; ddlm never imports it.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import pickle
import platform
import shlex
import shutil
import sys
import tempfile
import types
import warnings
from pathlib import Path

import harness
import torch
import torch.nn.functional as F
import transformers
import yaml
from safetensors.torch import save_file

from ddlm.core.safe_pickle import torch_load_inert
from ddlm.losses import dse
from ddlm.models.dream import dream_network, load_dream, qwen2_config
from ddlm.models.llada import llada_names, llada_network, llama_config, load_llada
from ddlm.models.mdlm import read_mdlm

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


NOTES: list[str] = []  # what the script changed or supplied to run the original code


def logits_ids() -> torch.Tensor:
    """The ids LLaDA's and Dream's networks run on: Long[2, LENGTH], every third the mask."""
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    ids[:, ::3] = MASK
    return ids


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


def compare(folder: Path, load, original: torch.nn.Module, ids: torch.Tensor) -> list[dict]:
    """Rows of max |ours - original| of the logits per dtype: ours loaded by ddlm's ``load`` from ``folder`` in that
    dtype, the original's parameters cast to it (its buffers, such as rotary frequencies, kept as built, as a load in
    that dtype keeps them); ``original(ids)`` -> logits."""
    rows = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        ours = load(folder, dtype=dtype).network
        for parameter in original.parameters():
            parameter.data = parameter.data.to(dtype)
        with torch.no_grad():
            difference = (ours(ids, None).double() - original(ids).double()).abs().max().item()
        rows.append(row("published layout", "logits", dtype, difference))
    return rows


def row(variant: str, quantity: str, dtype: torch.dtype, difference: float | None, note: str = "") -> dict:
    """One line of the table (difference None: not run, the note says why)."""
    return {"variant": variant, "quantity": quantity, "dtype": str(dtype).removeprefix("torch."),
            "max_abs_diff": difference, "note": note}


class Logits(torch.nn.Module):
    """An original model called as ``model(ids)`` -> its logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def llada(code: Path, work: Path) -> list[dict]:
    names = llada_names(LLADA["n_layers"], tied=False)
    theirs = {ours: published for published, ours in names.items()}
    state = {theirs[name]: t for name, t in random_state(llada_network(llama_config(LLADA))).items()}
    folder = write(work / "llada", LLADA, state)
    modeling = import_original(code, "llada", "modeling_llada")
    fields = {field.name for field in dataclasses.fields(modeling.ModelConfig)}
    original = modeling.LLaDAModel(modeling.ModelConfig(**{k: v for k, v in LLADA.items() if k in fields}), init_params=False)
    original.load_state_dict({name.removeprefix("model."): t for name, t in state.items()}, strict=True)
    rows = compare(folder, load_llada, Logits(original), logits_ids())
    for r in rows:
        if r["dtype"] == "float64":
            r["note"] = "LLaDA's code rotates q and k in float32 (rope_full_precision casts them with .float()); ddlm keeps float64"
    return rows


def dream(code: Path, work: Path) -> list[dict]:
    state = random_state(dream_network(qwen2_config(DREAM)))
    folder = write(work / "dream", DREAM, state)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if "default" not in ROPE_INIT_FUNCTIONS:  # Dream's code (for transformers 4.46) looks it up; 5.x dropped it
        ROPE_INIT_FUNCTIONS["default"] = standard_rope
        NOTES.append("Dream: transformers 5 dropped the \"default\" rotary entry Dream's code looks up; the script put back "
                     "the plain theta^(-2i/d) frequencies under that name.")
    modeling = import_original(code, "dream", "modeling_dream")
    config = modeling.DreamConfig(**{k: v for k, v in DREAM.items() if k not in ("architectures", "model_type", "torch_dtype")})
    config._attn_implementation = "sdpa"
    original = modeling.DreamModel(config)
    original.load_state_dict(state, strict=True)
    return compare(folder, load_dream, Logits(original), logits_ids())




# ---------------------------------------------------------------- MDLM (github.com/kuleshov-group/mdlm)

MDLM_TOKENS = 50  # a tokenizer of 50 ids without a mask token: MDLM adds the mask as id 50
MDLM_MODEL = {"name": "tiny", "type": "ddit", "hidden_size": 64, "cond_dim": 32, "length": 32, "n_blocks": 2, "n_heads": 4,
              "scale_by_sigma": True, "dropout": 0.1, "tie_word_embeddings": False}
MDLM_METHODS = ("forward", "_process_sigma", "_subs_parameterization", "_sample_t", "q_xt", "_forward_pass_diffusion")
MDLM_NEG_INFINITY = -1000000.0  # Diffusion.__init__'s self.neg_infinity
FILES = {"LLaDA": ("modeling_llada.py", "configuration_llada.py"),
         "Dream": ("modeling_dream.py", "configuration_dream.py", "generation_utils.py"),
         "MDLM": ("models/dit.py", "diffusion.py", "noise_schedule.py", "utils.py")}


def mdlm_run_config(time_conditioning: bool) -> dict:
    """The fields of an MDLM run config (configs/config.yaml with model=tiny-like sizes) that the code run here reads."""
    return {"backbone": "dit", "parameterization": "subs", "time_conditioning": time_conditioning, "T": 0,
            "subs_masking": False, "model": dict(MDLM_MODEL), "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
            "data": {"train": "openwebtext", "tokenizer_name_or_path": "gpt2"},
            "training": {"ema": 0.9999, "antithetic_sampling": True, "importance_sampling": False,
                         "change_of_variables": False, "sampling_eps": 1e-3}}


def rotary_qkv_(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, seqlen_offsets=0, num_heads_q=None):
    """Stand-in for flash_attn.layers.rotary.apply_rotary_emb_qkv_: qkv [B, L, 3, H, d], cos and sin [L, r/2] ->
    qkv with q and k rotated in place over their first r dims (halves x1, x2: x1 cos - x2 sin, x1 sin + x2 cos)."""
    if interleaved or num_heads_q is not None or cos_k is not None or sin_k is not None or seqlen_offsets:
        raise NotImplementedError("the flash_attn stand-in rotates only as MDLM's dit.py asks (non-interleaved, q and k)")
    half, length = cos.shape[-1], qkv.shape[1]
    cos, sin = cos[:length, None], sin[:length, None]
    for part in (0, 1):
        x1, x2 = qkv[:, :, part, :, :half].clone(), qkv[:, :, part, :, half:2 * half].clone()
        qkv[:, :, part, :, :half] = x1 * cos - x2 * sin
        qkv[:, :, part, :, half:2 * half] = x1 * sin + x2 * cos
    return qkv


def varlen_attention(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """Stand-in for flash_attn_interface.flash_attn_varlen_qkvpacked_func: qkv [T, 3, H, d] of sequences bounded by
    cu_seqlens [B + 1] -> [T, H, d], softmax(q k^T * scale) v within each sequence (scale 1/sqrt(d) by default)."""
    if dropout_p or causal:
        raise NotImplementedError("the flash_attn stand-in has no dropout and no causal mask")
    scale = softmax_scale or qkv.shape[-1] ** -0.5
    out = torch.empty_like(qkv[:, 0])
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = qkv[start:end].unbind(1)
        out[start:end] = torch.einsum("hqk,khd->qhd", torch.softmax(torch.einsum("qhd,khd->hqk", q, k) * scale, -1), v)
    return out


def install_flash_attn_stand_in() -> None:
    """Put the stand-in ``flash_attn`` (its kernels need CUDA and half precision; this runs float32 on the CPU) in sys.modules."""
    root, layers, rotary, interface = (types.ModuleType(name) for name in (
        "flash_attn", "flash_attn.layers", "flash_attn.layers.rotary", "flash_attn.flash_attn_interface"))
    rotary.apply_rotary_emb_qkv_, interface.flash_attn_varlen_qkvpacked_func = rotary_qkv_, varlen_attention
    root.layers, layers.rotary, root.flash_attn_interface = layers, rotary, interface
    sys.modules.update({module.__name__: module for module in (root, layers, rotary, interface)})
    NOTES.append("MDLM: flash_attn (CUDA-only) was replaced by a stand-in written in this script from flash_attn's documented "
                 "semantics: apply_rotary_emb_qkv_ (non-interleaved rotary on q and k, in place) and "
                 "flash_attn_varlen_qkvpacked_func (softmax attention within each cu_seqlens sequence, scale 1/sqrt(d)); "
                 "MDLM's DIT ran in float32 on the CPU, where its bfloat16 autocast (CUDA) is off.")


def load_source(path: Path, name: str) -> types.ModuleType:
    """Run the module file ``path`` as module ``name`` (without its package's __init__)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def original_functions(path: Path, names: tuple[str, ...], namespace: dict, within: str | None = None) -> dict:
    """The functions ``names`` of ``path`` (methods of its class ``within`` if given), compiled from its source into
    ``namespace`` (which supplies the globals they use) without running the rest of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    scope = next(node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == within) if within else tree.body
    found = [node for node in scope if isinstance(node, ast.FunctionDef) and node.name in names]
    if missing := set(names) - {node.name for node in found}:
        raise SystemExit(f"{path} lacks {sorted(missing)}")
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def mdlm_diffusion(code: Path, backbone: torch.nn.Module, noise: torch.nn.Module, config: dict):
    """An object running MDLM's own Diffusion methods (MDLM_METHODS, from diffusion.py) over ``backbone`` and ``noise``,
    with the attributes Diffusion.__init__ sets for ``config``; ``drawn`` keeps the last t and x_t it drew."""
    utils = types.SimpleNamespace(**original_functions(code / "utils.py", ("print_nans",), {"torch": torch}))
    methods = original_functions(code / "diffusion.py", MDLM_METHODS, {"torch": torch, "F": F, "utils": utils}, "Diffusion")
    host = type("Diffusion", (), methods)()
    training = config["training"]
    host.__dict__.update(backbone=backbone, noise=noise, mask_index=MDLM_TOKENS, neg_infinity=MDLM_NEG_INFINITY,
                         parameterization=config["parameterization"], T=config["T"], time_conditioning=config["time_conditioning"],
                         subs_masking=config["subs_masking"], antithetic_sampling=training["antithetic_sampling"],
                         sampling_eps=training["sampling_eps"],
                         importance_sampling=training["importance_sampling"],
                         change_of_variables=training["change_of_variables"], drawn={})
    for name in ("_sample_t", "q_xt"):
        setattr(host, name, recording(host, name))
    return host


def recording(host, name: str):
    """``host``'s method ``name``, keeping each result in ``host.drawn[name]``."""
    method = getattr(host, name)

    def call(*args):
        host.drawn[name] = method(*args)
        return host.drawn[name]

    return call


def write_mdlm_hub(folder: Path, state: dict, config: dict) -> Path:
    """The hub layout of kuleshov-group/mdlm-owt: config.json (MDLMConfig's fields) and model.safetensors (``backbone.*``)."""
    model = config["model"]
    return write(folder, {"model_type": "mdlm", "architectures": ["MDLM"], "vocab_size": MDLM_TOKENS + 1,
                          "model_length": model["length"], "hidden_dim": model["hidden_size"], "cond_dim": model["cond_dim"],
                          "n_blocks": model["n_blocks"], "n_heads": model["n_heads"], "dropout": model["dropout"],
                          "time_conditioning": config["time_conditioning"]},
                 {f"backbone.{name}": tensor.contiguous() for name, tensor in state.items()})


def write_mdlm_ckpt(run: Path, backbone: torch.nn.Module, config: dict) -> Path:
    """An MDLM run: ``checkpoints/last.ckpt`` as Lightning saves it (raw weights zero, the network's weights as the EMA
    shadow, the omegaconf config pickled in hyper_parameters) and ``.hydra/config.yaml``."""
    from omegaconf import OmegaConf

    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    raw = {f"backbone.{name}": tensor if name.endswith("inv_freq") else torch.zeros_like(tensor)
           for name, tensor in backbone.state_dict().items()}
    torch.save({"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.2.1", "state_dict": raw,
                "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": [p.detach().clone() for p in backbone.parameters()]},
                "hyper_parameters": {"config": OmegaConf.create(config), "tokenizer": None}}, path)
    return path


def mdlm_log_probs(ours, host, seed: int) -> tuple[float, float, float]:
    """(max |ddlm - MDLM|, max |MDLM|, the spacing of ddlm's dtype at its largest |log-score|) of log p(x0 | x_t)
    [B, L, N + 1] (MDLM's Diffusion.forward, SUBS) on random x_t, sigma: ddlm's log-scores plus the log(e^sigma - 1)
    it subtracted at masked positions, over the entries both give (not the mask's own entry at a
    masked position, ddlm's 0 there); ddlm's -inf must sit where MDLM has its -1e6 floor."""
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randint(0, MDLM_TOKENS, (4, MDLM_MODEL["length"]), generator=gen)
    x_t[torch.rand(x_t.shape, generator=gen) < 0.5] = MDLM_TOKENS
    sigma = torch.tensor([0.05, 0.7, 2.0, 5.0], dtype=next(host.backbone.parameters()).dtype)
    with torch.no_grad():
        theirs = host.forward(x_t, sigma).double()
        masked = x_t == MDLM_TOKENS
        shift = ours.log_score_shift(sigma.to(ours.dtype), scale_by_vocabulary=False).double()  # what ddlm subtracted
        log_scores = ours(x_t, sigma.to(ours.dtype))
        log_p = log_scores.double() + torch.where(masked, shift[:, None], 0.0)[..., None]
    compared = ~(F.one_hot(x_t, MDLM_TOKENS + 1).bool() & masked[..., None])
    floor = theirs < MDLM_NEG_INFINITY / 2
    if not torch.equal(torch.isneginf(log_p)[compared], floor[compared]):
        raise SystemExit("MDLM: ddlm's impossible entries are not where MDLM puts its -1e6")
    kept = compared & ~floor
    largest = log_scores[kept].abs().max()
    spacing = torch.nextafter(largest, torch.tensor(math.inf, dtype=largest.dtype)) - largest
    return (log_p - theirs)[kept].abs().max().item(), theirs[kept].abs().max().item(), spacing.item()


def mdlm_nelbo(ours, host, seed: int) -> tuple[float, float]:
    """(max |ddlm - MDLM|, max |MDLM|) of the continuous-time NELBO integrand per sequence [8]: MDLM's
    _forward_pass_diffusion (its own antithetic t and x_t draws) summed over positions, against ddlm's
    noise.rate(t) * sum dse(log-scores) at the same t and x_t."""
    x0 = torch.randint(0, MDLM_TOKENS, (8, MDLM_MODEL["length"]), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    with torch.no_grad():
        theirs = host._forward_pass_diffusion(x0).double().sum(-1)
        t, x_t = host.drawn["_sample_t"].to(ours.dtype), host.drawn["q_xt"]
        sigma_bar = ours.noise.total(t)
        bound = ours.noise.rate(t) * dse(ours(x_t, sigma_bar), x_t, x0, sigma_bar[:, None], ours.graph).sum(-1)
    return (bound.double() - theirs).abs().max().item(), theirs.abs().max().item()


def mdlm(code: Path, work: Path) -> list[dict]:
    """MDLM's rows: its DIT (models/dit.py) and Diffusion methods against ddlm's conversions, without and with time
    conditioning."""
    warnings.filterwarnings("ignore", message=".*(autocast|CUDA is not available).*")  # torch.cuda.amp on a CPU machine
    install_flash_attn_stand_in()
    versions = ", ".join(f"{name} {importlib.import_module(name).__version__}" for name in ("einops", "omegaconf"))
    NOTES.append(f"MDLM: its imports einops and omegaconf came from PyPI ({versions}).")
    dit = load_source(code / "models" / "dit.py", "mdlm_models_dit")
    noise_schedule = load_source(code / "noise_schedule.py", "mdlm_noise_schedule")
    return [r for timed in (False, True) for r in mdlm_variant(code, work, dit, noise_schedule.LogLinearNoise(), timed)]


def mdlm_variant(code: Path, work: Path, dit: types.ModuleType, noise: torch.nn.Module, timed: bool) -> list[dict]:
    """One random DIT (MDLM's class, its config a dict made omegaconf by DIT) written as the hub layout (and, untimed,
    as a .ckpt), converted by ddlm and compared: log-probabilities in float32 (float64 if MDLM runs), NELBO integrand."""
    config = mdlm_run_config(timed)
    torch.manual_seed(0)
    backbone = dit.DIT(config, vocab_size=MDLM_TOKENS + 1).eval()
    random_state(backbone, seed=2 + timed)
    host = mdlm_diffusion(code, backbone, noise, config)
    variant = f"hub layout, {'time-conditioned' if timed else 'no time conditioning'}"
    ours = read_mdlm(write_mdlm_hub(work / f"mdlm_hub_{int(timed)}", backbone.state_dict(), config))
    gap, scale = mdlm_nelbo(ours, host, seed=5)
    rows = [log_probs_row(variant, ours, host),
            row(variant, "NELBO integrand per sequence", torch.float32, gap, f"the integrand reaches {scale:.4g} nats")]
    if not timed:
        ckpt = write_mdlm_ckpt(work / "mdlm_run", backbone, config)
        ckpt_row = log_probs_row(".ckpt (EMA), omegaconf hyper_parameters", read_mdlm(ckpt), host)
        rows.append({**ckpt_row, "note": f"{ckpt_row['note']}; {ckpt_note(ckpt)}"})
    return rows + [mdlm_float64(variant, ours, host)]


def ckpt_note(path: Path) -> str:
    """What torch.load(weights_only=True) and ddlm's inert reader make of the .ckpt."""
    try:
        torch.load(path, weights_only=True)
        plain = "reads it"
    except pickle.UnpicklingError:
        plain = "refuses it"
    config = torch_load_inert(path)["hyper_parameters"]["config"]
    return f"torch.load(weights_only=True) {plain}; ddlm reads hyper_parameters['config'] as {config!r}"


def log_probs_row(variant: str, ours, host) -> dict:
    """The log-probability row of ``ours`` against ``host`` in their dtype."""
    difference, scale, spacing = mdlm_log_probs(ours, host, seed=4)
    return row(variant, "SUBS log p(x0 | x_t)", ours.dtype, difference,
               f"log-probabilities down to -{scale:.3g}; {str(ours.dtype).removeprefix('torch.')} spacing at ddlm's largest "
               f"log-score (with -log(e^sigma - 1)): {spacing:.3g}")


def mdlm_float64(variant: str, ours, host) -> dict:
    """The float64 log-probability row: MDLM's DIT and ddlm's model in float64, or why MDLM's does not run."""
    host.backbone.double()
    try:
        return log_probs_row(variant, ours.double(), host)
    except RuntimeError as error:
        return row(variant, "SUBS log p(x0 | x_t)", torch.float64, None,
                   f"MDLM's DIT does not run in float64: {str(error).splitlines()[0]}")
    finally:
        host.backbone.float()


# ---------------------------------------------------------------- the report


def digests(code: Path, family: str) -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of the family's files that were run."""
    return {name: hashlib.sha256((code / name).read_bytes()).hexdigest()[:16] for name in FILES[family]}


def measure(args) -> dict:
    """Run each family given: its rows, its source and file digests, and the notes on what the script supplied."""
    sources = dict(item.split("=", 1) for item in args.source)
    work = Path(tempfile.mkdtemp(prefix="ddlm-compare-"))
    rows, families = [], {}
    for family, code, run in (("LLaDA", args.llada_code, llada), ("Dream", args.dream_code, dream), ("MDLM", args.mdlm_code, mdlm)):
        if code is not None:
            rows += [{"family": family, **r} for r in run(Path(code), work)]
            families[family] = {"source": sources.get(family, str(code)), "files": digests(Path(code), family)}
    shutil.rmtree(work)
    return {"machine": f"{harness.machine()}, transformers {transformers.__version__}, Python {platform.python_version()}",
            "rows": rows, "families": families, "notes": NOTES}


def markdown(record: dict) -> str:
    """The table of a compare_originals record."""
    lines = [f"# ddlm against the families' original code ({record['machine']})", "",
             "Tiny random networks, the same weights in ddlm and in the original code; the largest absolute difference "
             "of what each computes. Command: `" + command(record["settings"]) + "`", "",
             "| family | checkpoint | compared | dtype | max abs diff | note |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        value = "not run" if r["max_abs_diff"] is None else "0" if r["max_abs_diff"] == 0 else f"{r['max_abs_diff']:.3g}"
        cells = [r["family"], r["variant"], r["quantity"], r["dtype"], value, r["note"]]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    lines += ["", "Original code run:", ""]
    for family, info in record["families"].items():
        files = ", ".join(f"{name} (sha256 {digest})" for name, digest in info["files"].items())
        lines.append(f"- {family}: {info['source']}: {files}")
    if record["notes"]:
        lines += ["", "What the script supplied to run it:", ""] + [f"- {note}" for note in record["notes"]]
    return "\n".join(lines) + "\n"


def command(settings: dict) -> str:
    """The command line of a record's settings."""
    parts = ["OMP_NUM_THREADS=1 python benchmarks/compare_originals.py"]
    parts += [f"--{name.replace('_', '-')} {shlex.quote(settings[name])}" for name in ("llada_code", "dream_code", "mdlm_code")
              if settings[name]]
    parts += [f"--source {shlex.quote(item)}" for item in settings["source"]]
    return " ".join(parts)


def parse_args(argv: list[str] | None = None):
    parser = harness.parser(__doc__)
    parser.add_argument("--llada-code", type=Path, help="folder of LLaDA's modeling_llada.py and configuration_llada.py")
    parser.add_argument("--dream-code", type=Path,
                        help="folder of Dream's modeling_dream.py, configuration_dream.py, generation_utils.py")
    parser.add_argument("--mdlm-code", type=Path, help="a checkout of github.com/kuleshov-group/mdlm")
    parser.add_argument("--source", action="append", default=[], metavar="FAMILY=TEXT",
                        help="where a family's code came from, for the report (default: its folder)")
    args = harness.parse(parser, argv)
    if not args.report_only and not (args.llada_code or args.dream_code or args.mdlm_code):
        parser.error("give --llada-code, --dream-code and/or --mdlm-code (or --report-only)")
    if any("=" not in item for item in args.source):
        parser.error("--source takes FAMILY=TEXT")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    harness.report("compare_originals", args, lambda: measure(args), markdown)


if __name__ == "__main__":
    main()
