"""Infill templates: the ``{{n}}`` / ``{{lo..hi}}`` gap syntax, segments, gap-length combinations and token ids."""

from __future__ import annotations

import itertools
import math
import re
from typing import Sequence

import torch

from ..core.checks import check_text

GAP = re.compile(r"\{\{\s*([-+]?[\d.]+(?:\s*\.\.\s*[-+]?[\d.]+)?)\s*\}\}")  # {{n}} or {{lo..hi}}; signs and points are caught to be refused
MAX_LENGTH_COMBINATIONS = 64  # unknown-length infill: at most this many combinations of gap lengths are tried

Template = str | Sequence[str | int | range]
Segment = str | int | range


def gap_count(text: str, gap: str) -> int:
    """One count of a gap: a ValueError for anything but a plain int (too long ones are refused later)."""
    if not text.isdecimal():
        raise ValueError(f"a gap {{{{{gap}}}}} must hold a positive int number of tokens (or a range lo..hi of them)")
    if len(text.lstrip("0")) > 1000:  # int() refuses over 4300 digits; no model is this long
        raise ValueError(f"a gap of a {len(text.lstrip('0'))}-digit number of tokens exceeds any model's maximum length")
    return int(text)


def gap_length(text: str) -> int | range:
    """The token count of a ``{{n}}`` gap, or the candidate counts ``range(lo, hi + 1)`` of a ``{{lo..hi}}`` gap."""
    text = re.sub(r"\s+", "", text)
    if ".." not in text:
        return gap_count(text, text)
    low, _, high = text.partition("..")
    return range(gap_count(low, text), gap_count(high, text) + 1)


def gap_name(segment: range) -> str:
    """A range gap as the template writes it, ``{{lo..hi}}``."""
    return f"{{{{{segment.start}..{segment.stop - 1}}}}}"


def check_gap(segment: int | range, index: int, max_length: int) -> int | range:
    """Gap number ``index`` checked against the model's maximum length; a range of one count comes back as that int."""
    if isinstance(segment, int):
        if segment < 1:
            raise ValueError(f"a gap must have at least 1 token, got {segment}")
        if segment > max_length:
            raise ValueError(f"a gap of {segment} tokens exceeds the model's maximum length {max_length}")
        return segment
    allowed = f"allowed: 1 <= min <= max <= {max_length} (the model's maximum length)"
    if segment.step != 1:
        raise ValueError(f"gap {index} {segment!r}: a range of gap lengths must have step 1; {allowed}")
    low, high = segment.start, segment.stop - 1
    if low > high:
        raise ValueError(f"gap {index} {gap_name(segment)}: min {low} > max {high}; {allowed}")
    if low < 1:
        raise ValueError(f"gap {index} {gap_name(segment)}: min {low} < 1; {allowed}")
    if high > max_length:
        raise ValueError(f"gap {index} {gap_name(segment)}: max {high} exceeds the model's maximum length; {allowed}")
    return low if low == high else segment


def split_template(template: Template) -> list:
    """The raw segments of a string template (gaps parsed) or a list template (as given)."""
    if isinstance(template, str):
        parts = GAP.split(check_text("template", template))
        return [gap_length(part) if i % 2 else part for i, part in enumerate(parts)]
    if isinstance(template, Sequence):
        return list(template)
    raise TypeError(f"a template is a str with {{{{n}}}} gaps or a list of str and int, got {type(template).__name__}")


def parse_template(template: Template, max_length: int) -> list[Segment]:
    """Segments of a template: given text (str) and gaps (int: exactly that many tokens; range: candidate lengths).

    A string template marks gaps as ``{{n}}`` or ``{{lo..hi}}`` (lo to hi tokens, both included);
    a list mixes strings, ints and ``range(lo, hi + 1)`` objects. A range of one count is that int.
    """
    segments = split_template(template)
    gap_index = 0
    for k, segment in enumerate(segments):
        if isinstance(segment, bool) or not isinstance(segment, (str, int, range)):
            raise TypeError(f"template segments must be str (given text), int (gap length) or range (candidate gap "
                            f"lengths), got {segment!r}")
        if isinstance(segment, str):
            check_text(f"template[{k}]", segment)
            continue
        gap_index += 1
        segments[k] = check_gap(segment, gap_index, max_length)
    gaps = sum(segment if isinstance(segment, int) else segment.start for segment in segments if not isinstance(segment, str))
    if not gaps:
        raise ValueError("the template has no gap: mark one as {{n}} (n tokens) or pass an int in a list")
    if gaps > max_length:
        raise ValueError(f"the template's gaps need {gaps} tokens but the model's maximum length is {max_length}")
    return [segment for segment in segments if segment != ""]


def token_ids(tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def gap_length_candidates(template: Template, tokenizer, max_length: int) -> list[tuple[int, ...]]:
    """Every combination of gap lengths a template allows (one int per gap, in order), checked to fit.

    A fixed gap contributes its length; a ``{{lo..hi}}`` gap each count from lo to hi. Each gap's
    maximum must fit beside the given text and the other gaps' minimums (ValueError naming the gap and
    the counts allowed), and there may be at most ``MAX_LENGTH_COMBINATIONS`` (64) combinations.
    """
    segments = parse_template(template, max_length)
    given = sum(len(token_ids(tokenizer, s)) for s in segments if isinstance(s, str))
    gaps = [range(s, s + 1) if isinstance(s, int) else s for s in segments if not isinstance(s, str)]
    minimum = given + sum(g.start for g in gaps)
    if minimum > max_length:
        raise ValueError(f"the template needs at least {minimum} tokens ({given} given, {minimum - given} in gaps at their "
                         f"minimum lengths) but the model's maximum length is {max_length}")
    for index, gap in enumerate(gaps, 1):
        room = max_length - (minimum - gap.start)
        if len(gap) > 1 and gap.stop - 1 > room:
            raise ValueError(f"gap {index} {gap_name(gap)}: max {gap.stop - 1} does not fit: beside {given} given tokens and "
                             f"the other gaps' minimums the model's maximum length {max_length} leaves room for "
                             f"{room}; allowed: 1 <= min <= max <= {room}")
    count = math.prod(len(g) for g in gaps)
    if count > MAX_LENGTH_COMBINATIONS:
        raise ValueError(f"the template's gap ranges make {count} combinations of lengths "
                         f"({' x '.join(str(len(g)) for g in gaps)}); at most {MAX_LENGTH_COMBINATIONS} are tried: narrow the ranges")
    return list(itertools.product(*gaps))


def encode_template(template: Template, tokenizer, max_length: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str | None, int]]]:
    """Token ids Long[L] (gaps hold 0), the given positions Bool[L], and the spans in order:
    (given text, its token count) or (None, gap length)."""
    spans, ids, given = [], [], []
    for segment in parse_template(template, max_length):
        if isinstance(segment, range):
            raise ValueError(f"gap {gap_name(segment)} has an unknown length: infill tries every length (infill), or "
                             "give one length per gap (gap_length_candidates lists the combinations)")
        given_text = isinstance(segment, str)
        tokens = token_ids(tokenizer, segment) if given_text else [0] * segment
        spans.append((segment if given_text else None, len(tokens)))
        ids += tokens
        given += [given_text] * len(tokens)
    if len(ids) > max_length:
        gaps = sum(n for text, n in spans if text is None)
        raise ValueError(f"the template needs {len(ids)} tokens ({len(ids) - gaps} given, {gaps} in gaps) "
                         f"but the model's maximum length is {max_length}")
    return torch.tensor(ids, dtype=torch.long), torch.tensor(given, dtype=torch.bool), spans
