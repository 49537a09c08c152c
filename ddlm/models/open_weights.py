"""What the native LLaDA and Dream loaders share: a bidirectional decoder built from transformers' own blocks,
and a checked, low-memory reader of a published weight layout.

``BidirectionalLM`` is transformers' Llama or Qwen2 decoder stack (embedding, decoder layers, final RMSNorm,
output projection) with every layer's attention made non-causal: each layer's ``self_attn.is_causal`` is
False and no attention mask is passed, so SDPA attends from every position to every other. Its parameter
names are Qwen2's (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``, ..., ``lm_head``); a family's
loader gives a map from its checkpoint's tensor names to these.

``load_open_weights`` builds the network on the meta device (no memory), checks the checkpoint's names and
shapes against it from the file headers alone (one ValueError naming every missing, unexpected and
wrong-shape tensor), then reads the tensors one at a time, each cast to the dtype and put on its device
(``device``, or a ``device_map``: "auto" through accelerate, or a dict of module prefixes to devices). A
safetensors tensor already in the dtype and bound for the CPU stays a view of safetensors' memory map of the
file (no copy); any other is read with plain file reads, ``CHUNK`` bytes at a time, into its cast tensor on its
device, so the file's pages never count towards the process's memory: loading costs the loaded weights plus
one chunk (an 8B model in bfloat16 from a float32 checkpoint: about 16 GB, not 16 + 32). Weights come from
``model.safetensors``, a sharded ``model.safetensors.index.json``, or pickled ``pytorch_model.bin`` files read
only with ``torch.load(weights_only=True)``; no code from the model directory ever runs.

Saving. A network that ``load_open_weights`` filled remembers its published layout (``published_config``: the
config.json it was read from, as a dict; ``published_names``: the network's parameter names -> the checkpoint's), and
``network.save_pretrained(directory, state_dict=None)`` writes that layout back: config.json as published (every field
kept, ``torch_dtype`` / ``dtype`` set to the saved dtype) and the weights under the published tensor names
(``model.safetensors``, or shards and ``model.safetensors.index.json`` past ``max_shard_size``), every row of the
(padded) embedding and output matrices as they are, a tied output head once (as the embedding). No code file is
written; ``load_model`` reads the directory back once a tokenizer is saved next to it.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .modeling import pickle_refused, read_config_file

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
DTYPES = {"float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16}
STORED = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}  # safetensors' names
CHUNK = 1 << 23  # bytes of a safetensors tensor read at a time when it is cast or moved (a multiple of every element size)


class Trunk(nn.Module):
    """Embedding, decoder layers, final norm and rotary tables (Qwen2Model's / LlamaModel's parts and names)."""

    def __init__(self, config, layer_cls, norm_cls, rotary_cls):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(layer_cls(config, index) for index in range(config.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False
        self.norm = norm_cls(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = rotary_cls(config=config)


class BidirectionalLM(nn.Module):
    """A Llama / Qwen2 decoder with bidirectional attention: ``network(ids Long[B, L], sigma_bar [B])`` ->
    logits [B, L, V] in the parameters' dtype (sigma_bar is ignored: the network is not time-conditioned).

    config: a transformers ``LlamaConfig`` / ``Qwen2Config`` (attn_implementation "sdpa"); layer_cls,
    norm_cls, rotary_cls: that family's ``*DecoderLayer``, ``*RMSNorm``, ``*RotaryEmbedding``. With
    ``config.tie_word_embeddings`` the output projection is the embedding matrix. wide_rotary: the rotary
    cos / sin tables are handed to the layers in float32 at least (else in the hidden states' dtype, as
    transformers does), for layers that rotate in float32 under bfloat16 (LLaDA's).

    ``network(ids, sigma_bar, rows=R)`` (``accepts_rows``): the logits of the flat rows R Long[R'] of [B, L] only,
    [R', V]; the final norm and the output projection (both per position) run on those rows alone."""

    accepts_rows = True
    published_config: dict | None = None  # set by load_open_weights: what save_pretrained writes back
    published_names: dict[str, str] | None = None

    def __init__(self, config, layer_cls, norm_cls, rotary_cls, *, wide_rotary: bool = False):
        super().__init__()
        self.config = config
        self.rotary_cls = rotary_cls
        self.wide_rotary = wide_rotary
        self.model = Trunk(config, layer_cls, norm_cls, rotary_cls)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids: torch.Tensor, sigma_bar: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.model.embed_tokens(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        table_dtype = torch.promote_types(hidden.dtype, torch.float32) if self.wide_rotary else hidden.dtype
        rotary = self.model.rotary_emb(hidden[:1, :1].to(table_dtype), positions)  # reads only the dtype and device
        for layer in self.model.layers:
            hidden = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
        if rows is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.to(hidden.device))
        return self.lm_head(self.model.norm(hidden))

    def save_pretrained(self, directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None, *,
                        max_shard_size: int | str = "5GB") -> None:
        """Write the network in the published layout it was loaded from (see the module docstring). state_dict: this
        network's keys (default: its own state); keys it does not have, or a missing tensor, are a ValueError."""
        if self.published_config is None or self.published_names is None:
            raise ValueError("this network was not loaded from a published layout (load_open_weights), so it has no layout to save in")
        state = self.state_dict() if state_dict is None else dict(state_dict)
        tied = bool(self.config.tie_word_embeddings)
        unexpected = sorted(key for key in state if key not in self.published_names and not (tied and key == "lm_head.weight"))
        missing = sorted(key for key in self.published_names if key not in state)
        if unexpected or missing:
            raise ValueError("the state dict does not match the network: " + "; ".join(
                f"{label}: {keys}" for label, keys in (("unexpected", unexpected), ("missing", missing)) if keys))
        tensors = {self.published_names[key]: state[key].detach().to("cpu").contiguous() for key in self.published_names}
        dtype = state["model.embed_tokens.weight"].dtype
        config = dict(self.published_config)
        for field in [field for field in ("torch_dtype", "dtype") if field in config] or ["torch_dtype"]:
            config[field] = str(dtype).removeprefix("torch.")
        write_layout(directory, config, tensors, max_shard_size)


def model_config(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``/config.json, or a ValueError naming the file."""
    file = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} has no config.json; it is not a model directory")
    return read_config_file(file)


def config_dtype(config: dict, dtype: torch.dtype | str | None) -> torch.dtype:
    """The dtype to load in: ``dtype`` if given (a torch dtype or its name), else config.json's ``torch_dtype`` /
    ``dtype``, else float32."""
    if dtype is None:
        dtype = config.get("torch_dtype") or config.get("dtype") or torch.float32
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    else:
        chosen = DTYPES.get(str(dtype).removeprefix("torch."))
    if chosen is None or not chosen.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a floating dtype ddlm loads (one of {sorted(DTYPES)})")
    return chosen


def tokenizer_size(path: str | os.PathLike) -> int | None:
    """One past the largest token id the tokenizer files of a model directory name (``tokenizer.json``'s vocabulary and
    added tokens, ``vocab.json``, ``tokenizer_config.json``'s added_tokens_decoder), or None without such files."""
    ids: list[int] = []
    for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json"):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        with open(file, encoding="utf-8") as f:
            values = json.load(f)
        if name == "tokenizer.json":
            vocab = (values.get("model") or {}).get("vocab") or {}
            ids += list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
            ids += [token["id"] for token in values.get("added_tokens") or ()]
        elif name == "vocab.json":
            ids += list(values.values())
        else:
            ids += [int(key) for key in values.get("added_tokens_decoder") or ()]
    return max(ids) + 1 if ids else None


def padded_rows(path: str | os.PathLike, vocab_size: int, num_tokenizer_tokens: int | None) -> list[int]:
    """Ids of embedding rows past the tokenizer's vocabulary (never produced): [num_tokenizer_tokens, vocab_size);
    with num_tokenizer_tokens None, the tokenizer's size is read off ``path``'s tokenizer files (none: no rows)."""
    if num_tokenizer_tokens is None:
        found = tokenizer_size(path)
        return [] if found is None else list(range(min(found, vocab_size), vocab_size))
    if not 0 < num_tokenizer_tokens <= vocab_size:
        raise ValueError(f"num_tokenizer_tokens must lie in [1, {vocab_size}] (the model's output width), got {num_tokenizer_tokens}")
    return list(range(num_tokenizer_tokens, vocab_size))


def checkpoint_files(path: str | os.PathLike) -> tuple[bool, list[str]]:
    """(pickled?, weight files) of a model directory: model.safetensors or its sharded index, else pytorch_model.bin or
    its index; a FileNotFoundError naming the directory otherwise."""
    path = os.fspath(path)
    for pickled, single, index in ((False, SAFETENSORS, SAFETENSORS_INDEX), (True, PICKLE, PICKLE_INDEX)):
        if os.path.isfile(os.path.join(path, index)):
            with open(os.path.join(path, index), encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{os.path.join(path, index)} has no weight_map naming the shard of each tensor")
            files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
            absent = [file for file in files if not os.path.isfile(file)]
            if absent:
                raise FileNotFoundError(f"{os.path.join(path, index)} names shards that are not there: {absent}")
            return pickled, files
        if os.path.isfile(os.path.join(path, single)):
            return pickled, [os.path.join(path, single)]
    raise FileNotFoundError(f"{path} holds no weights ({SAFETENSORS}, {SAFETENSORS_INDEX}, {PICKLE} or {PICKLE_INDEX})")


def read_checkpoint(pickled: bool, files: list[str]) -> Iterator[tuple[str, str, Mapping]]:
    """(file, name, reader) for every tensor of the files; ``reader`` maps names to tensors (safetensors: read on
    access; pickles: torch.load(weights_only=True, mmap=True))."""
    for file in files:
        if pickled:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError as error:
                raise pickle_refused(file, error) from None
            for name in state:
                yield file, name, state
        else:
            try:
                with safe_open(file, framework="pt", device="cpu") as handle:
                    reader = _SafetensorsReader(handle, file)
                    for name in handle.keys():
                        yield file, name, reader
            except SafetensorError as error:
                raise ValueError(f"{file} is not a readable safetensors file (corrupt or truncated?): {error}") from None


class _SafetensorsReader:
    """``reader[name]`` -> the tensor (a view of the file's memory map); ``reader.shape(name)`` from the header without
    reading it; ``reader.load(name, dtype, device)`` -> the tensor cast and moved (read past the map if either is needed)."""

    def __init__(self, handle, file: str):
        self.handle, self.file, self.entries, self.start = handle, file, None, 0

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(name).get_shape())

    def load(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The tensor on ``device``, in ``dtype`` if floating: a view of the memory map if that needs no cast and no
        move, else a new tensor filled by plain reads of ``CHUNK`` bytes, each cast and moved into place."""
        if self.entries is None:  # the header safe_open checked: 8-byte little-endian length, JSON, then the data
            with open(self.file, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                self.entries, self.start = json.loads(f.read(length)), 8 + length
        entry = self.entries[name]
        stored = STORED.get(entry["dtype"])
        wanted = dtype if stored is not None and stored.is_floating_point else stored
        if stored is None or sys.byteorder != "little" or (wanted == stored and device.type == "cpu"):
            tensor = self.handle.get_tensor(name).to(device)
            return tensor.to(dtype) if tensor.is_floating_point() else tensor
        out = torch.empty(entry["shape"], dtype=wanted, device=device)
        (begin, end), size, flat = entry["data_offsets"], stored.itemsize, out.view(-1)
        buffer = bytearray(min(CHUNK, end - begin))
        with open(self.file, "rb") as f:
            f.seek(self.start + begin)
            for offset in range(begin, end, len(buffer)):
                count = min(len(buffer), end - offset)
                if f.readinto(memoryview(buffer)[:count]) != count:
                    raise ValueError(f"{self.file} is truncated: {name} runs past its end")
                first = (offset - begin) // size
                flat[first:first + count // size].copy_(torch.frombuffer(buffer, dtype=stored, count=count // size))
        return out


def check_names(shapes: dict[str, tuple], names: Mapping[str, str], wanted: dict[str, tuple], where: str) -> None:
    """One ValueError naming every missing, unexpected and wrong-shape tensor (checkpoint names) of a checkpoint whose
    tensor shapes are ``shapes``; ``names`` maps checkpoint names to the network's, ``wanted`` the network's shapes."""
    missing = sorted(name for name in names if name not in shapes)
    unexpected = sorted(name for name in shapes if name not in names)
    wrong = [f"{name} (checkpoint {list(shape)}, config {list(wanted[names[name]])})" for name, shape in sorted(shapes.items())
             if name in names and tuple(shape) != tuple(wanted[names[name]])]
    problems = [f"{label}: {items}" for label, items in (("missing", missing), ("unexpected", unexpected)) if items]
    problems += ["shapes differ from config.json's: " + ", ".join(wrong)] if wrong else []
    if problems:
        raise ValueError(f"the weights in {where} do not match its config.json; " + "; ".join(problems))


def _shape(reader, name: str) -> tuple[int, ...]:
    return reader.shape(name) if isinstance(reader, _SafetensorsReader) else tuple(reader[name].shape)


def _load(reader, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(reader, _SafetensorsReader):
        return reader.load(name, dtype, device)
    tensor = reader[name].to(device)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def write_layout(directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor],
                 max_shard_size: int | str = "5GB") -> None:
    """Write ``config`` as config.json and ``tensors`` as ``model.safetensors`` (or shards ``model-0000i-of-0000n.safetensors``
    with ``model.safetensors.index.json`` when they exceed ``max_shard_size``) in ``directory``. Each file is written
    under a temporary name and renamed into place, so a model memory-mapped from the same directory stays readable;
    the safetensors weight files of an earlier save there (single or sharded) are removed."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    split = split_torch_state_dict_into_shards(tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    written = {}
    for filename, names in split.filename_to_tensors.items():
        temporary = os.path.join(directory, f".{filename}.partial")
        save_file({name: tensors[name] for name in names}, temporary, metadata={"format": "pt"})
        written[filename] = temporary
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        written[SAFETENSORS_INDEX] = _write_json(directory, SAFETENSORS_INDEX, index)
    written["config.json"] = _write_json(directory, "config.json", config)
    stale = [SAFETENSORS, SAFETENSORS_INDEX]
    if os.path.isfile(os.path.join(directory, SAFETENSORS_INDEX)):
        with open(os.path.join(directory, SAFETENSORS_INDEX), encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        stale += [name for name in set((weight_map or {}).values()) if isinstance(name, str) and os.path.basename(name) == name]
    for name in stale:
        if name not in written and os.path.isfile(os.path.join(directory, name)):
            os.remove(os.path.join(directory, name))
    for filename, temporary in written.items():
        os.replace(temporary, os.path.join(directory, filename))


def _write_json(directory: str, name: str, values: dict) -> str:
    """``values`` as indented JSON in a temporary file of ``directory``; returns its path."""
    temporary = os.path.join(directory, f".{name}.partial")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2)
        f.write("\n")
    return temporary


def placement(network: nn.Module, device, device_map, dtype: torch.dtype, no_split: list[str]) -> dict[str, torch.device]:
    """Module prefix -> device: ``{"": device}`` (default cpu), or ``device_map`` (a dict, or "auto" planned by accelerate)."""
    if device_map is None:
        return {"": torch.device(device if device is not None else "cpu")}
    if device is not None:
        raise ValueError("give device or device_map, not both")
    if device_map == "auto":
        try:
            from accelerate import infer_auto_device_map
        except ImportError:
            raise ValueError("device_map='auto' needs accelerate (pip install accelerate); or pass device=") from None
        device_map = infer_auto_device_map(network, dtype=dtype, no_split_module_classes=no_split)
    if not isinstance(device_map, Mapping):
        raise ValueError(f"device_map must be 'auto' or a dict of module names to devices, got {device_map!r}")
    offloaded = sorted(name for name, where in device_map.items() if str(where) in ("disk", "meta"))
    if offloaded:
        raise ValueError(f"the model does not fit the devices: device_map puts {offloaded[:5]} on disk, which ddlm does not offload to")
    return {name: torch.device(f"cuda:{where}" if isinstance(where, int) else where) for name, where in device_map.items()}


def device_of(name: str, devices: dict[str, torch.device]) -> torch.device:
    """The device of the longest module prefix of ``name`` in ``devices``."""
    matches = [prefix for prefix in devices if prefix == "" or name == prefix or name.startswith(prefix + ".")]
    if not matches:
        raise ValueError(f"device_map places no module holding {name}")
    return devices[max(matches, key=len)]


def _put(network: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter ``name`` of network by ``tensor``."""
    owner, _, attribute = name.rpartition(".")
    setattr(network.get_submodule(owner), attribute, nn.Parameter(tensor, requires_grad=tensor.is_floating_point()))


def load_open_weights(path: str | os.PathLike, build, names: Mapping[str, str] | None, *, dtype: torch.dtype,
                      device=None, device_map=None, published: dict | None = None) -> BidirectionalLM:
    """Build ``build()`` (a ``BidirectionalLM``) on the meta device and fill it from the weights in ``path``, whose
    checkpoint names map to the network's through ``names`` (None: the network's own names; a tied head is in neither);
    see the module docstring. published: the config.json dict the directory was read from; the network keeps it and
    the inverse name map (``published_config``, ``published_names``) for ``save_pretrained``.
    Returns the network in eval mode, its floating tensors in ``dtype``."""
    with torch.device("meta"):
        network = build()
    wanted = {name: tuple(p.shape) for name, p in network.named_parameters()}  # a tied head appears once, as the embedding
    names = {name: name for name in wanted} if names is None else names
    if set(names.values()) != set(wanted):
        raise ValueError(f"internal: the name map does not cover the network ({sorted(set(wanted) ^ set(names.values()))[:5]})")
    pickled, files = checkpoint_files(path)
    shapes = {name: _shape(reader, name) for _, name, reader in read_checkpoint(pickled, files)}
    check_names(shapes, names, wanted, os.fspath(path))
    no_split = [type(network.model.layers[0]).__name__] if len(network.model.layers) else []
    devices = placement(network, device, device_map, dtype, no_split)
    for _, name, reader in read_checkpoint(pickled, files):
        target = names[name]
        _put(network, target, _load(reader, name, dtype, device_of(target, devices)))
    if network.config.tie_word_embeddings:
        network.lm_head.weight = network.model.embed_tokens.weight
    network.model.rotary_emb = network.rotary_cls(config=network.config).to(device_of("model.rotary_emb", devices))
    if len(set(devices.values())) > 1:
        from accelerate import dispatch_model

        network = dispatch_model(network, device_map={name: str(where) for name, where in devices.items()})
    if published is not None:
        network.published_config = dict(published)
        network.published_names = {ours: theirs for theirs, ours in names.items()}
    return network.eval()
