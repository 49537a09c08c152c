"""The output the getting-started and tutorial pages show is written by benchmarks/tutorials.py, which runs the
pages' own commands: every published command is on its page, every page includes what the script writes, and a
part runs a page's blocks in order and publishes what a command printed."""

import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"^<!-- include: benchmarks/results/(tutorial_\w+)\.md -->$", re.MULTILINE)


def tutorials_module():
    spec = importlib.util.spec_from_file_location("tutorials", ROOT / "benchmarks" / "tutorials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tutorials"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_published_command_is_on_its_page_and_the_page_includes_its_output():
    tutorials = tutorials_module()
    keys = set()
    for name, part in tutorials.PARTS.items():
        shell = [text for kind, text in tutorials.commands(part) if kind == "shell"]
        included = set(INCLUDE.findall((ROOT / part.page).read_text(encoding="utf-8")))
        for prefix, key in part.publish.items():
            assert any(line.startswith(prefix) for line in shell), f"{name}: `{prefix}` is not a command of {part.page}"
            assert f"tutorial_{key}" in included, f"{part.page} does not include benchmarks/results/tutorial_{key}.md"
            keys.add(f"tutorial_{key}")
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    assert {key for page in pages for key in INCLUDE.findall(page.read_text(encoding="utf-8"))} == keys
    hooks = (ROOT / "tools" / "mkdocs_hooks.py").read_text()
    assert all(f'"{key}.md": "benchmarks/tutorials.py' in hooks for key in keys)  # the note before a first run


def test_a_part_runs_the_page_in_order_and_publishes_what_a_command_printed(tmp_path, monkeypatch):
    tutorials = tutorials_module()
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "<!-- test: file data/words.txt -->", "```text", "a b c", "```", "",
        "```python", "from pathlib import Path", "print('read', Path('data/words.txt').read_text().split())", "```", "",
        "<!-- test: skip not for the script either -->", "```python", "raise AssertionError('a skipped block ran')", "```", "",
        "```bash", "ddlm demo --samples 50 --steps 2 --num-t 2 --seed 1", "```", ""]), encoding="utf-8")
    monkeypatch.setitem(tutorials.PARTS, "page", tutorials.Part(str(page), {"ddlm demo": "page_demo"}, whole_page=True))
    results = tmp_path / "results"
    results.mkdir()
    records = tutorials.run_part("page", tmp_path / "work", results, threads=1)
    assert [r["command"] for r in records] == ["(write data/words.txt)", records[1]["command"], records[2]["command"]]
    assert records[1]["stdout"] == "read ['a', 'b', 'c']\n"
    assert "total variation" in records[2]["stdout"]
    published = (results / "tutorial_page_demo.md").read_text()
    assert published.startswith("`ddlm demo --samples 50 --steps 2 --num-t 2 --seed 1` (")
    assert records[2]["stdout"].rstrip() in published and "torch thread(s)" in published
    json.dumps(records)  # what tutorials.json stores
