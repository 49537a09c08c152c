"""benchmarks/instruction_tasks.py: the synthetic SFT tasks are deterministic, their answers right (checked by
computing them again here), their rows short, their train and test items disjoint; the command line writes both
files; exact_match strips surrounding whitespace and nothing else."""

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import instruction_tasks  # noqa: E402

TASK_NAMES = {"reverse", "sort", "copy", "fill"}
COPY_PATTERN = re.compile(r"The (\w+) is '([a-z]+)'\. The (\w+) is '([a-z]+)'\. What is the (\w+)\?")
FILL_PATTERN = re.compile(r"Fill the blank: (.*___.*) Options: (\w+), (\w+), (\w+)")


@pytest.fixture(scope="module")
def splits():
    return {split: instruction_tasks.make_examples(800, 3, split) for split in ("train", "test")}


def items(row: dict) -> set:
    """The underlying items of one row, read back from its prompt and response."""
    task, prompt, response = row["task"], row["prompt"], row["response"]
    if task == "reverse":
        return {("word", prompt.removeprefix("Reverse the word: "))}
    if task == "sort":
        return {("sort", tuple(sorted(int(n) for n in prompt.removeprefix("Sort the numbers: ").split())))}
    if task == "copy":
        match = COPY_PATTERN.fullmatch(prompt)
        return {("word", match[2]), ("word", match[4])}
    line = FILL_PATTERN.fullmatch(prompt)[1]
    return {("fill", line.replace("___", response))}


def check_answer(row: dict) -> None:
    task, prompt, response = row["task"], row["prompt"], row["response"]
    if task == "reverse":
        word = prompt.removeprefix("Reverse the word: ")
        assert word in instruction_tasks.WORDS and response == "".join(reversed(word)) and response != word
    elif task == "sort":
        numbers = [int(n) for n in prompt.removeprefix("Sort the numbers: ").split(" ")]
        assert 3 <= len(numbers) <= 5 and all(0 <= n <= 9 for n in numbers)
        expected = list(numbers)
        for i in range(len(expected)):  # insertion sort, not sorted()
            while i > 0 and expected[i - 1] > expected[i]:
                expected[i - 1], expected[i] = expected[i], expected[i - 1]
                i -= 1
        assert response == " ".join(map(str, expected))
    elif task == "copy":
        match = COPY_PATTERN.fullmatch(prompt)
        assert match, prompt
        facts = {match[1]: match[2], match[3]: match[4]}
        assert len(facts) == 2 and match[2] != match[4] and response == facts[match[5]]
    else:
        match = FILL_PATTERN.fullmatch(prompt)
        assert match, prompt
        line, options = match[1], match.group(2, 3, 4)
        assert line in instruction_tasks.TEMPLATES and line.count("___") == 1 and "the ___ " in line
        assert response in options and len(set(options)) == 3
        assert [o in instruction_tasks.NOUNS for o in options].count(True) == 1 and response in instruction_tasks.NOUNS
        assert all(o in instruction_tasks.FUNCTION_WORDS for o in options if o != response)


def test_deterministic():
    for split in ("train", "test"):
        rows = instruction_tasks.make_examples(200, 7, split)
        assert rows == instruction_tasks.make_examples(200, 7, split)
        assert rows != instruction_tasks.make_examples(200, 8, split)
    code = "import instruction_tasks, json; print(json.dumps(instruction_tasks.make_examples(40, 1, 'test')))"
    other_run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=BENCHMARKS,
                               env={"PYTHONHASHSEED": "123", "PATH": ""}, check=True)
    assert json.loads(other_run.stdout) == instruction_tasks.make_examples(40, 1, "test")  # no salted hash()


def test_tasks_mixed_evenly(splits):
    for rows in splits.values():
        assert Counter(row["task"] for row in rows) == {name: 200 for name in TASK_NAMES}
        assert all(set(row) == {"prompt", "response", "task"} for row in rows)
    assert Counter(row["task"] for row in instruction_tasks.make_examples(7, 0, "train")) == {
        "reverse": 2, "sort": 2, "copy": 2, "fill": 1}
    assert instruction_tasks.make_examples(0, 0, "test") == []
    with pytest.raises(ValueError, match="split"):
        instruction_tasks.make_examples(4, 0, "valid")


def test_answers_are_right(splits):
    for rows in splits.values():
        for row in rows:
            check_answer(row)


def test_train_and_test_items_disjoint(splits):
    train = set().union(*map(items, splits["train"]))
    test = set().union(*map(items, splits["test"]))
    assert train and test and not train & test
    assert {kind for kind, _ in test} == {"word", "sort", "fill"}
    assert not set(instruction_tasks.split_words("train")) & set(instruction_tasks.split_words("test"))
    assert not set(instruction_tasks.split_fill_items("train")) & set(instruction_tasks.split_fill_items("test"))
    assert len(instruction_tasks.split_words("test")) >= 20 and len(instruction_tasks.split_fill_items("test")) >= 20


def test_word_list():
    words = instruction_tasks.WORDS
    assert 180 <= len(words) <= 240 and len(set(words)) == len(words)
    assert all(3 <= len(w) <= 8 and w.isascii() and w.isalpha() and w.islower() and w != w[::-1] for w in words)
    assert not set(instruction_tasks.NOUNS) & set(instruction_tasks.FUNCTION_WORDS)


def test_rows_are_short(splits):
    for rows in splits.values():
        assert max(len(row["prompt"]) + len(row["response"]) for row in rows) < 120
    noun = max(instruction_tasks.NOUNS, key=len)
    options = ", ".join(sorted(instruction_tasks.FUNCTION_WORDS, key=len)[-2:] + [noun])
    for template in instruction_tasks.TEMPLATES:  # the longest fill row there can be
        assert len(f"Fill the blank: {template} Options: {options}") + len(noun) < 120


def test_generators_take_an_rng():
    """Each generator is (rng) -> (prompt, response), drawing training items unless told the split."""
    test_items = set().union(*map(items, instruction_tasks.make_examples(400, 0, "test")))
    for name, generate in instruction_tasks.TASKS.items():
        for seed in range(20):
            row = dict(zip(("prompt", "response"), generate(random.Random(seed))), task=name)
            check_answer(row)
            assert not items(row) & test_items
            assert generate(random.Random(seed)) == generate(random.Random(seed), "train")


def test_command_line_writes_both_files(tmp_path):
    out = tmp_path / "data"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "instruction_tasks.py"), str(out), "--train", "40",
                             "--test", "8", "--seed", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for split, n in (("train", 40), ("test", 8)):
        path = out / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert rows == instruction_tasks.make_examples(n, 2, split) == instruction_tasks.read_jsonl(path)
        quarter = n // 4
        assert f"{path}: {n} rows (reverse {quarter}, sort {quarter}, copy {quarter}, fill {quarter})" in result.stdout


def test_exact_match():
    assert instruction_tasks.exact_match(" nohtyp\n", "nohtyp")
    assert instruction_tasks.exact_match("2 7 9", "\t2 7 9 ")
    assert not instruction_tasks.exact_match("Nohtyp", "nohtyp")
    assert not instruction_tasks.exact_match("2  7 9", "2 7 9")
    assert not instruction_tasks.exact_match("blue.", "blue")
    assert not instruction_tasks.exact_match("'blue'", "blue")
    assert not instruction_tasks.exact_match("", "blue")


def test_accuracy():
    result = instruction_tasks.accuracy(["nohtyp", "2 7 9 ", "red", "size"], ["nohtyp", "2 7 9", "blue", "size"],
                                        ["reverse", "sort", "copy", "fill"])
    assert result == {"overall": 0.75, "n": 4, "per_task": {"reverse": 1.0, "sort": 1.0, "copy": 0.0, "fill": 1.0},
                      "per_task_n": {"reverse": 1, "sort": 1, "copy": 1, "fill": 1}}
    assert instruction_tasks.accuracy(["a", "b"], ["a", "c"], ["copy", "copy"])["per_task"] == {"copy": 0.5}
    with pytest.raises(ValueError):
        instruction_tasks.accuracy(["a"], ["a", "b"], ["copy", "copy"])
