"""Instruction data for supervised fine-tuning: prompt/response examples -> fixed-length blocks with a prompt mask.

Rows come from the files or hub dataset that ``DataConfig.source`` names (``data.format: sft``), each either

- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a conversation, rendered with the tokenizer's chat
  template. The last message must be the assistant's: it is the response; every earlier turn (system, user,
  earlier assistant turns) is the prompt, as ``DiffusionPipeline.chat`` renders it before it decodes a reply; or
- ``{"prompt": ..., "response": ...}``: one exchange, rendered as a user turn and the assistant's reply with the
  chat template when the tokenizer has one, else as the prompt's tokens followed by the response's (write the
  separator you want, such as a newline, at the end of the prompt).

Every example becomes one block of ``block_size`` tokens: prompt, response, EOS, then EOS up to the block's end.
The prompt positions are marked (``ResponseBlocks.prompt_mask``): they are never noised and carry no loss. The
EOS tokens belong to the response and are trained on, as LLaDA does, so the model learns to end its answer:
block decoding (``chat``, ``generate(block_size=...)``) stops at the first EOS, and a fixed-length generation fills
the tail of a short answer with EOS. Examples are not packed several to a block: the others would be context the
response could read, and the loss would no longer bound -log p(response | its own prompt).

An example whose prompt, response and one EOS do not fit the block is refused with its count (never truncated);
``data.drop_long: true`` drops such examples instead and reports how many.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections.abc import Iterator

import torch

from .corpora import DataConfig, TokenBlocks, _check_batching, _is_local, _local_files, _split_source, eos_id, held_out_split

ROW_KINDS = {"messages": ("messages",), "prompt-response": ("prompt", "response")}


def row_kind(row: dict, where: str) -> str:
    """``"messages"`` or ``"prompt-response"``: which of the two layouts a row has (ValueError naming the row if neither)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: an SFT row must be a mapping with 'messages' or 'prompt' and 'response', got {type(row).__name__}")
    if "messages" in row:
        return "messages"
    if "prompt" in row and "response" in row:
        return "prompt-response"
    raise ValueError(f"{where}: an SFT row needs a 'messages' list or 'prompt' and 'response' strings; it has {sorted(row)}")


def read_rows(config: DataConfig, split: str = "train") -> Iterator[dict]:
    """The rows of the train or validation split: .jsonl (one JSON object a line) and .json (a list of objects) files
    are read with ``json``; .parquet files and hub datasets through ``datasets``."""
    source, hub_split = _split_source(config, split)
    if not _is_local(source):
        from datasets import load_dataset

        path, _, subset = source.partition(":")
        yield from load_dataset(path, subset or None, split=hub_split)
        return
    for path in _local_files(source):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        yield _json(line, f"{path}:{number}")
        elif path.suffix == ".json":
            rows = _json(path.read_text(encoding="utf-8"), str(path))
            yield from rows if isinstance(rows, list) else [rows]
        elif path.suffix == ".parquet":
            from datasets import load_dataset

            yield from load_dataset("parquet", data_files=[str(path)], split="train")
        else:
            raise ValueError(f"{path}: SFT data must be .jsonl, .json or .parquet rows (data.format: sft)")


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValueError(f"{where} is not valid JSON ({error})") from None


def render(row: dict, tokenizer, where: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one row; the response does not yet end with EOS."""
    kind = row_kind(row, where)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if kind == "messages":
        messages = row["messages"]
        if not has_template:
            raise ValueError(f"{where}: the rows hold 'messages' but the tokenizer has no chat template; give "
                             "{prompt, response} rows instead, or a tokenizer with a chat_template")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} mappings")
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the last message is the response and must have role 'assistant', got {messages[-1]['role']!r}")
        context, response = list(messages[:-1]), messages[-1]["content"]
    else:
        prompt, response = row["prompt"], row["response"]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise ValueError(f"{where}: 'prompt' and 'response' must be strings")
        context = [{"role": "user", "content": prompt}] if has_template else None
    if not isinstance(response, str) or not response.strip():
        raise ValueError(f"{where}: the response is empty (field {'messages[-1].content' if kind == 'messages' else 'response'})")
    if context is None:
        prompt_text, response_text = prompt, response
    else:
        prompt_text = tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(context + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError(f"{where}: the chat template renders the conversation with a different start than the prompt "
                             "alone, so the response cannot be separated from the prompt")
        response_text = full[len(prompt_text):]
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(prompt_text), encode(response_text)


def format_signature(kinds: set[str], tokenizer) -> dict:
    """What the rendering of the examples depends on besides their text: the row layouts and the chat template
    (a checkpoint records it; resuming with another is refused)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"rows": sorted(kinds), "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest()[:16]}


class ResponseBlocks(TokenBlocks):
    """SFT examples, one per block: tokens Long[n, L] (prompt, response, EOS padding) and prompt_mask Bool[n, L]
    (True at prompt positions: clamped, never scored). ``batches`` yields (tokens, prompt_mask) pairs."""

    def __init__(self, tokens: torch.Tensor, prompt_mask: torch.Tensor, signature: dict | None = None):
        super().__init__(tokens)
        if tuple(prompt_mask.shape) != tuple(tokens.shape) or prompt_mask.dtype != torch.bool:
            raise ValueError(f"prompt_mask must be Bool{list(tokens.shape)}, got {prompt_mask.dtype} {list(prompt_mask.shape)}")
        if bool(prompt_mask.all(1).any()):
            raise ValueError("an example has no response position")
        self.prompt_mask = prompt_mask
        self.signature = signature or {}

    @classmethod
    def build(cls, rows, tokenizer, block_size: int, *, drop_long: bool = False, where: str = "data.source") -> ResponseBlocks:
        """Render and pad ``rows`` (see the module docstring); a ValueError counting the examples that do not fit."""
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("SFT pads every response with EOS and trains on it (so the model learns to stop), but the tokenizer "
                             "has no eos_token")
        eos = eos_id(tokenizer)
        tokens, masks, kinds, long = [], [], set(), []
        for index, row in enumerate(rows):
            here = f"{where} row {index}"
            prompt, response = render(row, tokenizer, here)
            kinds.add(row_kind(row, here))
            if len(prompt) + len(response) + 1 > block_size:
                long.append((index, len(prompt), len(response)))
                continue
            ids = prompt + response + [eos] * (block_size - len(prompt) - len(response))
            tokens.append(ids)
            masks.append([True] * len(prompt) + [False] * (block_size - len(prompt)))
        total = len(tokens) + len(long)
        if long:
            first, prompt_len, response_len = long[0]
            prompt_only = sum(p >= block_size for _, p, _ in long)
            message = (f"{len(long)} of {total} examples in {where} do not fit data.block_size={block_size} with one EOS "
                       f"({prompt_only} of them by their prompt alone; the first is row {first}: prompt {prompt_len} + "
                       f"response {response_len} tokens)")
            if not drop_long:
                raise ValueError(message + "; raise data.block_size, shorten them, or set data.drop_long=true to drop them")
            warnings.warn(message + ": dropped (data.drop_long)", stacklevel=2)
        if not tokens:
            raise ValueError(f"{where} holds no SFT example that fits data.block_size={block_size}")
        return cls(torch.tensor(tokens, dtype=torch.long), torch.tensor(masks, dtype=torch.bool), format_signature(kinds, tokenizer))

    def split(self, validation_fraction: float, seed: int = 0) -> tuple[ResponseBlocks, ResponseBlocks]:
        """(train, validation) as ``TokenBlocks.split`` holds out blocks, the prompt masks kept with them."""
        return tuple(ResponseBlocks(self.tokens[part].long(), self.prompt_mask[part], self.signature)
                     for part in held_out_split(len(self), validation_fraction, seed))

    def batches(self, start_step: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                with_labels: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(Long[b, L] tokens, Bool[b, L] prompt mask) per step from ``start_step`` on, b = global_batch_size // world_size,
        the examples of ``TokenBlocks.indices`` (a function of (seed, step) only)."""
        local = _check_batching(start_step, global_batch_size, rank, world_size)
        if with_labels:
            raise ValueError("SFT examples carry no class labels")
        if len(self) < global_batch_size:
            raise ValueError(f"{len(self)} SFT examples are fewer than one global batch of {global_batch_size}")

        def generate():
            for step in itertools.count(start_step):
                index = self.indices(step, global_batch_size, seed)[rank * local:(rank + 1) * local]
                yield self[index], self.prompt_mask[index]

        return generate()


def build_response_blocks(config: DataConfig, tokenizer, *, seed: int = 0) -> tuple[ResponseBlocks, ResponseBlocks]:
    """(train, validation) SFT examples of ``config`` (``data.format: sft``): the validation_split's rows, or a held-out
    validation_fraction of the examples."""
    train = ResponseBlocks.build(read_rows(config, "train"), tokenizer, config.block_size, drop_long=config.drop_long,
                                 where=f"data.source {config.source}")
    if config.validation_split is None:
        return train.split(config.validation_fraction, seed)
    validation = ResponseBlocks.build(read_rows(config, "validation"), tokenizer, config.block_size, drop_long=config.drop_long,
                                      where=f"data.validation_split {config.validation_split}")
    if validation.signature["rows"] != train.signature["rows"]:
        raise ValueError(f"data.validation_split rows are {validation.signature['rows']}, the training rows {train.signature['rows']}")
    return train, validation
