"""Chat with an instruction-tuned diffusion LM (LLaDA-Instruct, Dream-Instruct, a model ddlm tuned).

The conversation is rendered with the tokenizer's own chat template (with the generation prompt
that opens the assistant's turn), and the answer is decoded after it by semi-autoregressive blocks
with EOS stop (``ddlm.text.blocks``): every block is finished before the next starts, so each one
can be shown as soon as it is done (``stream``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..core.checks import check_text
from .templates import token_ids

ROLES = ("system", "user", "assistant", "tool")


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """A non-empty list of {"role": one of ROLES, "content": str} dicts, or a TypeError / ValueError naming the entry."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError('messages must be a non-empty list of {"role": ..., "content": ...} dicts')
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise ValueError(f'messages[{index}] must be a dict with "role" and "content", got {message!r:.80}')
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{index}]['role'] must be one of {ROLES}, got {message['role']!r}")
        check_text(f"messages[{index}]['content']", message["content"])
    return list(messages)


def render_chat(tokenizer, messages: Sequence[dict]) -> str:
    """The prompt text of a conversation: the tokenizer's chat template with the assistant's turn opened."""
    messages = check_messages(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template (tokenizer.chat_template is empty): chat() needs an "
                         "instruction-tuned model's tokenizer; for a base model use generate(prompt=...)")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class BlockStream:
    """Calls ``write`` with the new text of each finished block: the decoded answer so far less what was written."""

    def __init__(self, pipe, write: Callable[[str], None]):
        self.pipe, self.write = pipe, write
        self.ids: list[int] = []
        self.text = ""

    def __call__(self, new: torch.Tensor) -> None:
        """new: Long[1, block] the block just finished (one sample)."""
        eos = self.pipe.tokenizer.eos_token_id
        self.ids += new[0].tolist()
        ids = self.ids[:self.ids.index(eos)] if eos in self.ids else self.ids
        text = self.pipe.decode(ids)
        if text.startswith(self.text) and len(text) > len(self.text):  # a character cut by the block's end comes next time
            self.write(text[len(self.text):])
            self.text = text

    def finish(self, answer: str) -> None:
        """Write what the blocks' text did not show yet (the answer's last characters)."""
        if answer.startswith(self.text) and len(answer) > len(self.text):
            self.write(answer[len(self.text):])


def chat(pipe, messages: Sequence[dict], *, max_new_tokens: int = 256, block_size: int = 32, steps: int | None = None,
         predictor: str = "analytic", stream: Callable[[str], None] | None = None, **kwargs) -> str:
    """``DiffusionPipeline.chat``: the assistant's answer to ``messages`` (its text, cut before EOS).

    The prompt is ``render_chat``'s; ``max_new_tokens`` at most, in blocks of ``block_size`` with ``steps`` steps each
    (default ``block_size``: one token a step); stream: called with each finished block's new text; other keyword
    arguments go to ``DiffusionPipeline.sample_blocks`` (seed, decoding options, ``**llada_options()``, guidance).
    """
    prompt_ids = token_ids(pipe.tokenizer, render_chat(pipe.tokenizer, messages))
    writer = BlockStream(pipe, stream) if stream is not None else None
    row = pipe.sample_blocks(1, max_new_tokens, block_size, block_size if steps is None else steps, predictor,
                             prompt_ids=prompt_ids, stop_at_eos=True, on_block=writer, **kwargs)[0]
    eos = pipe.tokenizer.eos_token_id
    answer = pipe.decode(row[:-1] if len(row) and int(row[-1]) == eos else row)
    if writer is not None:
        writer.finish(answer)
    return answer
