"""Every code block of README.md and docs/**/*.md runs here, page by page, in a fresh working directory.

A page's ```python blocks run in order in one namespace; its ```bash blocks run line by line, ``ddlm ...``
lines in this process through ``ddlm.cli.main`` (a failing command fails the test) and ``python SCRIPT.py ...``
lines in this process too, as ``__main__``. Other languages (yaml, text) are not run unless a directive writes them to a file.

Directives are HTML comments on the lines just before a block (invisible in the rendered page):

- ``<!-- test: skip REASON -->``: not run; the reason says why (a network, a GPU, minutes of CPU) and what
  covers the block instead, if anything.
- ``<!-- test: sub "OLD" "NEW" -->``: run the block with OLD replaced by NEW (tiny shapes, a few steps).
- ``<!-- test: file NAME -->``: write the block to NAME in the page's directory (a recipe, a text file).
- ``<!-- test: setup files-of PAGE -->``: before the block, write the files and run the Python blocks of
  another page (an earlier tutorial's text and recipe).
- ``<!-- test: setup tiny-model PATH -->`` / ``<!-- test: setup ar-model PATH -->``: before the block, save an
  untrained tiny absorbing diffusion (or AR) model with a byte-level BPE tokenizer at PATH, standing in for
  a model a tutorial trained earlier or that the quickstart produces.
- ``<!-- test: setup sedd-hub PATH -->`` / ``<!-- test: setup word-tokenizer PATH -->``: a small checkpoint in
  SEDD's layout (random weights, ``tests/test_convert.py``) and a tokenizer of its 11 tokens, standing in for
  ``louaaron/sedd-small`` and ``gpt2`` (a download).
- ``<!-- test: setup tiny-bert PATH -->``: a tiny random BERT masked LM with its tokenizer, standing in for
  ``bert-base-uncased`` (a download).

A bash line that is neither ``ddlm`` nor ``python`` makes the test fail: mark its block skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!-- test: (\w[\w-]*)\s*(.*?)\s*-->$")
RUN_LANGUAGES = ("python", "bash")


@dataclass
class Block:
    language: str
    code: str
    line: int
    directives: list[tuple[str, str]] = field(default_factory=list)


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file with the directives on the lines just before each."""
    blocks, pending, lines = [], [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        directive, fence = DIRECTIVE.match(line), FENCE.match(lines[i])
        if directive:
            pending.append((directive.group(1), directive.group(2)))
        elif fence:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].rstrip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append(Block(fence.group(1), "\n".join(body) + "\n", start, pending))
            pending = []
        elif line:
            pending = []
        i += 1
    return blocks


def _pages_with_code() -> list[Path]:
    return [p for p in PAGES if any(b.language in RUN_LANGUAGES or _has(b, "file") for b in blocks_of(p))]


def _has(block: Block, kind: str) -> bool:
    return any(k == kind for k, _ in block.directives)


def _quoted(text: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def test_directives_are_known_and_skips_have_reasons():
    known = {"skip", "sub", "file", "setup"}
    for page in PAGES:
        for block in blocks_of(page):
            for kind, argument in block.directives:
                where = f"{page.relative_to(ROOT)}:{block.line}"
                assert kind in known, f"{where}: unknown directive {kind!r}"
                if kind == "skip":
                    assert len(argument) > 10, f"{where}: a skip needs its reason"
                if kind == "sub":
                    assert len(_quoted(argument)) == 2, f"{where}: sub takes two quoted strings"
                    old = _quoted(argument)[0].replace('\\"', '"')
                    assert old in block.code, f"{where}: {old!r} is not in the block"


# ----------------------------------------------------------------------------- fixtures


def _tokenizer():
    from ddlm.tokenization import train_byte_bpe
    from pydoc_data.topics import topics

    texts = [topics[name] for name in sorted(topics)[:40]]
    return train_byte_bpe(texts, 300)


def _save_model(path: Path, objective: str, tokenizer) -> None:
    import torch

    from ddlm import DDLMConfig, DDLMForDiffusion
    from ddlm.pipeline import DiffusionPipeline

    torch.manual_seed(0)
    config = DDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=64, objective=objective)
    model = DDLMForDiffusion(config).eval()
    if objective == "ar":  # an AR model has no pipeline: its directory is the model and the tokenizer
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    else:
        DiffusionPipeline(model, tokenizer).save_pretrained(path)


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


def _setup(argument: str, workdir: Path, tokenizer) -> None:
    kind, _, target = argument.partition(" ")
    path = workdir / target.strip()
    if kind == "files-of":  # the files and Python blocks of an earlier page (its text, its recipe)
        run_page(ROOT / target.strip(), workdir, tokenizer, languages=("python",))
    elif path.exists():
        return
    elif kind == "tiny-model":
        _save_model(path, "diffusion", tokenizer)
    elif kind == "ar-model":
        _save_model(path, "ar", tokenizer)
    elif kind == "sedd-hub":  # random weights in SEDD's exact layout (tests/test_convert.py), standing in for a download
        from test_convert import SEDDLayout, num_outputs, sedd_config, write_hub_dir

        config = sedd_config("absorb-loglinear")
        write_hub_dir(path, config, SEDDLayout(num_outputs(config), seed=0).state_dict(), "safetensors")
    elif kind == "tiny-bert":  # a tiny random BertForMaskedLM with its word tokenizer (tests/test_masked_lm.py), for bert-base-uncased
        from test_masked_lm import save_bert

        save_bert(path)
    elif kind == "word-tokenizer":  # a tokenizer of the stand-in's 11 tokens, standing in for gpt2
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        from test_convert import TOKENS

        words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(TOKENS)}, unk_token="w0"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(path)
    else:
        raise AssertionError(f"unknown setup {kind!r}")


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _run_bash(code: str, where: str) -> None:
    from ddlm.cli import main

    joined = code.replace("\\\n", " ")
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        if words[0] == "ddlm":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(words[1:])
                except SystemExit as exit:
                    raise AssertionError(f"{where}: `{line}` exited with {exit.code}:\n{out.getvalue()}") from None
        elif words[0] == "python" and words[1].endswith(".py"):  # a script: run in this process, as __main__
            out = io.StringIO()
            with contextlib.redirect_stdout(out), _argv(words[1:]):
                try:
                    runpy.run_path(words[1], run_name="__main__")
                except SystemExit as exit:
                    if exit.code not in (0, None):
                        raise AssertionError(f"{where}: `{line}` exited with {exit.code}:\n{out.getvalue()}") from None
        else:
            raise AssertionError(f"{where}: no runner for `{line}`; mark the block <!-- test: skip REASON -->")


def run_page(page: Path, workdir: Path, tokenizer, languages=RUN_LANGUAGES) -> int:
    """Run the blocks of ``page`` (those in ``languages``, plus file blocks) in ``workdir``; the number run."""
    import torch

    torch.manual_seed(0)
    namespace = {"__name__": "__docs__"}
    ran = 0
    for block in blocks_of(page):
        where = f"{page.relative_to(ROOT)}:{block.line}"
        if _has(block, "skip"):
            continue
        code = block.code
        for kind, argument in block.directives:
            if kind == "sub":
                old, new = (s.replace('\\"', '"') for s in _quoted(argument))
                code = code.replace(old, new)
            elif kind == "setup":
                _setup(argument, workdir, tokenizer)
        files = [argument for kind, argument in block.directives if kind == "file"]
        if files:
            Path(files[0]).parent.mkdir(parents=True, exist_ok=True)
            Path(files[0]).write_text(code, encoding="utf-8")
        elif block.language not in languages:
            continue
        elif block.language == "python":
            exec(compile(code, where, "exec"), namespace)
        elif block.language == "bash":
            _run_bash(code, where)
        else:
            continue
        ran += 1
    return ran


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(page, tmp_path, monkeypatch, tokenizer):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # pages run the examples as python examples/NAME.py
    if run_page(page, tmp_path, tokenizer) == 0:
        pytest.skip("every runnable block on this page is marked skip")


def test_readme_commands_are_run_by_ci():
    """The README's set-up and test commands are skipped above because CI runs them: check that it does."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet torch==2.13.0" in ci
    assert 'pip install --quiet -e ".[dev,triton,docs,eval,peft]"' in ci
    assert "python -m pytest -q" in ci and "mkdocs build --strict" in ci
    smoke = (ROOT / ".ci" / "wheel_smoke.sh").read_text()  # the quickstart, skipped above for its minutes of training
    assert "ddlm train quickstart" in smoke and "ddlm sample" in smoke
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch==2.13.0" in readme and "python -m pytest -q" in readme and "ddlm train quickstart" in readme


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_every_command_has_examples_and_defaults_in_its_help():
    from ddlm.cli import HelpFormatter, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert "examples:" in parser.format_help()
    for name, sub in commands.choices.items():
        assert re.search(r"\nexamples?:\n  (ddlm|accelerate) ", sub.format_help()), f"ddlm {name}: no example"
        formatter = HelpFormatter(f"ddlm {name}")
        for action in sub._actions:
            if action.option_strings and action.dest != "help" and not action.required:
                text = formatter._expand_help(action)
                assert "(default" in text and "\n" not in text, f"ddlm {name} {action.option_strings[0]}: {text!r}"
