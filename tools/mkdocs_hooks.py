"""MkDocs hooks (``hooks:`` in mkdocs.yml): the docs pages that are generated rather than written.

Markers in a page's markdown are replaced at build time:

- ``<!-- generated: cli -->``: every ``ddlm`` command's options, defaults and examples, read from
  ``ddlm.cli.build_parser()`` (the parser the command line itself uses);
- ``<!-- generated: recipe-fields -->``: every recipe section's fields with types and defaults, read from
  the dataclasses that validate recipes (``ddlm.training.recipes``, ``ddlm.text.corpora.DataConfig``, ``DDLMConfig``);
- ``<!-- include: benchmarks/results/NAME.md -->``: a table a benchmark script wrote, with links to
  ``benchmarks/results/*.png`` pointed at the copies this hook adds to the site under ``results/``;
  a file that does not exist yet becomes a note naming the script that writes it.

Every ``benchmarks/results/*.png`` is added to the site as ``results/NAME.png``, so the Results page
(``docs/results/index.md``) shows it as ``![...](NAME.png)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import tokenize
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INCLUDE = re.compile(r"^<!-- include: (benchmarks/results/[\w.-]+\.md) -->$", re.MULTILINE)  # alone on its line
WRITERS = {  # the script that writes each results file, for the note shown before it exists
    "sampling.md": "benchmarks/sampling.py",
    "quality.md": "benchmarks/quality.py",
    "bound_variance.md": "benchmarks/bound_variance.py",
    "kernels_cpu.md": "benchmarks/fused_loss.py",
    "kernels_head_cpu.md": "benchmarks/fused_loss.py --hidden 768",
    "sampler_overhead_cpu.md": "benchmarks/sampler_overhead.py",
    "train_throughput_cpu.md": "benchmarks/train_throughput.py",
    "guidance.md": "benchmarks/guidance.py --threads 1",
    "masked_lm_example.md": "benchmarks/masked_lm_example.py --threads 1",
    "load_memory.md": "benchmarks/load_memory.py",
    "sampler_overhead_bert_cpu.md": "benchmarks/sampler_overhead.py --family bert --clock cpu",
    "compare_originals.md": "benchmarks/compare_originals.py --llada-code DIR --dream-code DIR --mdlm-code DIR",
    "gpu.md": "benchmarks/gpu_suite.py",
    "adapt.md": "benchmarks/adapt.py",
    "sft_demo.md": "benchmarks/sft_demo.py --threads 1 --lora",
    "finetune_cost_cpu.md": "benchmarks/finetune_cost.py --threads 1",
    # the output of the getting-started and tutorial pages' own commands
    "tutorial_demo.md": "benchmarks/tutorials.py demo",
    "tutorial_quickstart.md": "benchmarks/tutorials.py quickstart",
    "tutorial_text_train.md": "benchmarks/tutorials.py text",
    "tutorial_text_eval.md": "benchmarks/tutorials.py text",
    "tutorial_ar_compare.md": "benchmarks/tutorials.py text ar",
    "tutorial_ar_naive.md": "benchmarks/tutorials.py text ar",
    "tutorial_ar_quality.md": "benchmarks/tutorials.py text ar",
    "tutorial_continuous.md": "benchmarks/tutorials.py continuous",
}


def on_files(files, config):
    """Add every benchmark plot to the site as results/NAME.png."""
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files):
    markdown = INCLUDE.sub(lambda m: _include(m.group(1)), markdown)
    if "<!-- generated: cli -->" in markdown:
        markdown = markdown.replace("<!-- generated: cli -->", cli_reference())
    if "<!-- generated: recipe-fields -->" in markdown:
        markdown = markdown.replace("<!-- generated: recipe-fields -->", recipe_reference())
    return markdown


def _include(relative: str) -> str:
    path = ROOT / relative
    if not path.exists():
        script = WRITERS.get(path.name, "its benchmark script")
        return f"*Not measured yet: `python {script}` writes `{relative}`, which appears here.*"
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:  # a results file's own headings: bold lines, not headings of the page
            line = f"**{line.lstrip('#').strip()}**"
        lines.append(line.replace("](benchmarks/results/", "]("))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the command line


def cli_reference() -> str:
    """Markdown for every command of ``ddlm``: a table of its arguments (help with default) and its examples."""
    from ddlm.cli import HelpFormatter, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = [f"`ddlm COMMAND [options]`; `ddlm COMMAND --help` prints the same as this page.\n",
           "| command | what it does |", "|---|---|"]
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    out += [f"| [`ddlm {name}`](#ddlm-{name}) | {_cell(summaries[name])} |" for name in commands.choices]
    for name, sub in commands.choices.items():
        formatter = HelpFormatter(f"ddlm {name}")
        out += ["", f"## ddlm {name}", "", sub.description or "", "", "```text", sub.format_usage().strip(), "```", "",
                "| argument | meaning |", "|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name_cell = ", ".join(action.option_strings) or action.metavar or action.dest
            if action.option_strings and action.nargs != 0:
                metavar = action.metavar or action.dest.upper()
                name_cell += " " + (" ".join(metavar) if isinstance(metavar, tuple) else metavar)
            if action.choices and action.option_strings:
                name_cell += " {" + ", ".join(map(str, action.choices)) + "}"
            out.append(f"| `{name_cell}` | {_cell(formatter._expand_help(action))} |")
        if sub.epilog:
            out += ["", "```bash", *[line.strip() for line in sub.epilog.splitlines()[1:] if line.strip()], "```"]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("``", "`").replace("|", "\\|")


# ----------------------------------------------------------------------------- recipes


def recipe_reference() -> str:
    """Markdown tables of the five recipe sections' fields, from the dataclasses that validate them."""
    from ddlm import DDLMConfig
    from ddlm.text.corpora import DataConfig
    from ddlm.training.recipes import FinetuneConfig, ModelRecipe, TokenizerRecipe, TrainConfig

    out = ["### `model`", "",
           "`preset` (one of `tiny`, `small`, `medium`; default `tiny`) picks the sizes; every other key is a "
           "`DDLMConfig` field, overriding the preset. `vocab_size` is set from the tokenizer.", "",
           "| key | type | default | meaning |", "|---|---|---|---|",
           f"| `preset` | `str` | `{ModelRecipe().preset}` | a size preset |"]
    described = _docstring_fields(DDLMConfig.__doc__ or "")
    for name, hint in DDLMConfig.__annotations__.items():
        if not name.startswith("_") and name != "model_type":
            out.append(f"| `{name}` | {_cell(_type_name(hint))} | `{_yaml(getattr(DDLMConfig, name))}` | {_cell(described.get(name, ''))} |")
    allowed = _allowed_values()
    for section, cls in (("tokenizer", TokenizerRecipe), ("data", DataConfig), ("train", TrainConfig), ("finetune", FinetuneConfig)):
        described = {**_docstring_fields(cls.__doc__ or ""), **_field_comments(cls)}
        out += ["", f"### `{section}`", "", _cell((cls.__doc__ or "").strip().split("\n\n")[0]), "",
                "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(f"| `{f.name}` | {_cell(_type_name(f.type))} | `{_yaml(default)}` | "
                       f"{_cell(allowed.get(section, {}).get(f.name, ''))} | {_cell(described.get(f.name, ''))} |")
    return "\n".join(out) + "\n"


def _allowed_values() -> dict[str, dict[str, str]]:
    """What each recipe field accepts, in the words of the checks that validate it: the messages the dataclasses
    pass to ``ddlm.core.checks.refuse_invalid``, captured by building each section once with its defaults."""
    from unittest import mock

    import ddlm.text.corpora
    import ddlm.training.recipes

    captured: dict[str, dict[str, str]] = {}

    def capture(section, checks, obj=None):
        captured[section] = {name: message for name, (_, message) in checks.items()}

    with mock.patch.object(ddlm.training.recipes, "refuse_invalid", capture), mock.patch.object(ddlm.text.corpora, "refuse_invalid", capture):
        ddlm.training.recipes.TokenizerRecipe(train_vocab_size=1024)
        ddlm.text.corpora.DataConfig()
        ddlm.training.recipes.TrainConfig()
        ddlm.training.recipes.FinetuneConfig()
    return captured


def _yaml(value) -> str:
    """A default as it would be written in a recipe."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _type_name(hint) -> str:
    """An annotation as written (the modules use postponed annotations, so it is usually a string already)."""
    return hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))


def _field_comments(cls) -> dict[str, str]:
    """The ``# comment`` at the end of each field's line in the class body."""
    import inspect

    source = inspect.getsource(cls)
    comments, line_field = {}, {}
    for number, line in enumerate(source.splitlines(), 1):
        match = re.match(r"\s+(\w+):", line)
        if match:
            line_field[number] = match.group(1)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.start[0] in line_field:
            comments[line_field[token.start[0]]] = token.string.lstrip("#").strip()
    return comments


def _docstring_fields(doc: str) -> dict[str, str]:
    """``name: text`` paragraphs of a docstring (DDLMConfig documents its fields this way)."""
    fields, current = {}, None
    for line in doc.splitlines():
        match = re.match(r"\s*`{0,2}(\w+)`{0,2}: (.*)", line)
        if match:
            current = match.group(1)
            fields[current] = match.group(2)
        elif current and line.strip():
            fields[current] += " " + line.strip()
        else:
            current = None
    return fields


os.environ.setdefault("COLUMNS", "100")  # usage lines wrap the same way on every machine
