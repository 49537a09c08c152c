"""A small synthetic instruction-following dataset whose answers can be checked exactly.

Made to demonstrate supervised fine-tuning (SFT) of a tiny diffusion LM (about 1M parameters, 64-128 token
sequences) and to measure exact-match accuracy before and after. Every row is a short prompt with a fixed
English instruction and exactly one correct response; prompt and response together stay under 120 characters.

The four tasks (``TASKS``, mixed evenly by ``make_examples``):

``reverse``
    ``Reverse the word: python`` -> ``nohtyp``. Words come from ``WORDS`` (about 200 common English and Python
    words of 3-8 lowercase letters, no palindromes).
``sort``
    ``Sort the numbers: 7 2 9`` -> ``2 7 9``. Three to five digits 0-9, repeats allowed; the answer is the
    digits in ascending order, one space apart.
``copy``
    ``The key is 'blue'. The code is 'tiger'. What is the key?`` -> ``blue``. Two facts with different labels
    (from ``LABELS``) and different words (from ``WORDS``); the question asks for one of them.
``fill``
    ``Fill the blank: Return the ___ of the list. Options: from, length, than`` -> ``length``. The line is one of
    the docstring-like ``TEMPLATES``; in each, the blank directly follows the determiner "the" and stands where
    a noun phrase's head must be. The options are one noun from ``NOUNS`` and two prepositions or
    conjunctions from ``FUNCTION_WORDS``; those can never follow "the" ("Return the from of the list" is not
    English), so exactly one option fits. (Several nouns would fit the line; only one is offered.)

Disjoint splits. ``test`` must measure generalisation, so it shares no underlying item with ``train``: every item
is put in one split by a stable hash (SHA-256 of the item's text, not Python's salted ``hash``), with about
``TEST_PERCENT`` per cent of the items held out. The items are: a word (shared by ``reverse`` and ``copy``: a
held-out word never appears in any training row of either task, as answer or as distractor); the multiset of a
``sort`` list (so no test list is a permutation of a training list); and a ``fill`` line with its noun (the pair
(template, noun); the nouns and templates themselves recur, as they must for the task to be learnable, but no
completed line does).

Command line: ``python benchmarks/instruction_tasks.py OUT_DIR --train 4000 --test 400 --seed 0`` writes
``OUT_DIR/train.jsonl`` and ``OUT_DIR/test.jsonl`` (one ``{"prompt", "response", "task"}`` object a line) and prints
the number of rows of each task. Score predictions with ``exact_match`` and ``accuracy``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import random
from pathlib import Path
from typing import Callable, Iterable, Sequence

SPLITS = ("train", "test")
TEST_PERCENT = 20  # per cent of the items (words, digit multisets, fill lines) held out for test

WORDS = tuple("""
    python list dict tuple string float class import return yield lambda print range object method module
    package value index append extend insert remove split join format lower upper strip replace sorted filter
    reduce open close read write file path buffer stream socket thread process queue stack array bytes integer
    number boolean false true none error raise except finally assert global while break continue pass async
    await debug test parse token syntax keyword default option config server client request header cookie
    session cache memory pointer handle signal event timer clock date time hour minute second week month year
    apple orange banana grape lemon cherry peach melon bread water coffee sugar salt pepper butter cheese house
    garden window door table chair bottle paper pencil book letter story music song river ocean island forest
    mountain desert valley stone cloud rain snow storm wind summer winter spring autumn morning evening night
    light dark green blue yellow purple silver golden black white brown animal tiger horse rabbit mouse bird
    eagle fish whale turtle monkey dragon castle bridge street market school doctor farmer artist friend family
    mother father sister brother child people planet rocket engine wheel camera phone ticket money king queen
    garlic onion carrot potato tomato
""".split())

LABELS = ("key", "name", "code", "color")  # the copy task's fact labels

TEMPLATES = (  # docstring-like lines; the blank always follows "the"
    "Return the ___ of the list.",
    "Return the ___ of the string.",
    "Compute the ___ of the values.",
    "Raise an error if the ___ is missing.",
    "Set the ___ of the object.",
    "Get the ___ from the config.",
    "Check that the ___ is valid.",
    "Store the ___ in the cache.",
    "Print the ___ of each item.",
    "Update the ___ after each step.",
    "Log the ___ before returning.",
    "Reset the ___ to its default.",
)
NOUNS = ("length", "size", "sum", "count", "value", "name", "type", "index",
         "number", "maximum", "minimum", "average", "total", "result", "key", "path")
FUNCTION_WORDS = ("from", "with", "into", "than", "upon", "unless", "because", "toward", "onto", "whereas")

REVERSE_PROMPT = "Reverse the word: {}"
SORT_PROMPT = "Sort the numbers: {}"
COPY_FACT = "The {} is '{}'."
COPY_QUESTION = "What is the {}?"
FILL_PROMPT = "Fill the blank: {} Options: {}"


def in_test(kind: str, item: str) -> bool:
    """Whether ``item`` (its text) of ``kind`` belongs to the test split: a stable hash, the same in every run."""
    digest = hashlib.sha256(f"{kind}:{item}".encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 100 < TEST_PERCENT


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")


@functools.lru_cache(maxsize=None)
def split_words(split: str) -> tuple[str, ...]:
    """The words of ``WORDS`` that ``split`` may use (the two splits' sets are disjoint)."""
    _check_split(split)
    return tuple(word for word in WORDS if in_test("word", word) == (split == "test"))


@functools.lru_cache(maxsize=None)
def split_fill_items(split: str) -> tuple[tuple[str, str], ...]:
    """The (template, noun) pairs that ``split`` may use (the two splits' sets are disjoint)."""
    _check_split(split)
    return tuple((template, noun) for template in TEMPLATES for noun in NOUNS
                 if in_test("fill", template.replace("___", noun)) == (split == "test"))


def sort_item(numbers: Sequence[int]) -> str:
    """A sort list's item: its multiset, written as the sorted digits."""
    return " ".join(str(n) for n in sorted(numbers))


def reverse_word(rng: random.Random, split: str = "train") -> tuple[str, str]:
    """``Reverse the word: python`` -> ``nohtyp``."""
    word = rng.choice(split_words(split))
    return REVERSE_PROMPT.format(word), word[::-1]


def sort_numbers(rng: random.Random, split: str = "train") -> tuple[str, str]:
    """``Sort the numbers: 7 2 9`` -> ``2 7 9`` (3-5 digits, repeats allowed)."""
    _check_split(split)
    while True:  # about 1 in 5 lists is a test list: a few draws at most, on average
        numbers = [rng.randrange(10) for _ in range(rng.randint(3, 5))]
        if in_test("sort", sort_item(numbers)) == (split == "test"):
            return SORT_PROMPT.format(" ".join(map(str, numbers))), sort_item(numbers)


def copy_key(rng: random.Random, split: str = "train") -> tuple[str, str]:
    """``The key is 'blue'. The code is 'tiger'. What is the key?`` -> ``blue``."""
    labels = rng.sample(LABELS, 2)
    words = rng.sample(split_words(split), 2)
    asked = rng.randrange(2)
    facts = " ".join(COPY_FACT.format(label, word) for label, word in zip(labels, words))
    return f"{facts} {COPY_QUESTION.format(labels[asked])}", words[asked]


def fill_blank(rng: random.Random, split: str = "train") -> tuple[str, str]:
    """``Fill the blank: Return the ___ of the list. Options: from, length, than`` -> ``length``."""
    template, noun = rng.choice(split_fill_items(split))
    options = [noun, *rng.sample(FUNCTION_WORDS, 2)]
    rng.shuffle(options)
    return FILL_PROMPT.format(template, ", ".join(options)), noun


TASKS: dict[str, Callable[..., tuple[str, str]]] = {
    "reverse": reverse_word, "sort": sort_numbers, "copy": copy_key, "fill": fill_blank}


def make_examples(n: int, seed: int, split: str) -> list[dict]:
    """``n`` rows ``{"prompt", "response", "task"}`` of ``split``, the tasks taking turns (their counts differ by at
    most one) in shuffled order; the same (n, seed, split) gives the same rows."""
    _check_split(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(f"instruction-tasks/{seed}/{split}")  # a str seed is hashed with SHA-512: stable across runs
    names = list(TASKS)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        prompt, response = TASKS[name](rng, split)
        rows.append({"prompt": prompt, "response": response, "task": name})
    rng.shuffle(rows)
    return rows


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write ``rows`` to ``path``, one JSON object a line (UTF-8); makes the parent folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows ``write_jsonl`` wrote."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def exact_match(prediction: str, reference: str) -> bool:
    """Whether ``prediction`` equals ``reference`` once surrounding whitespace is stripped from both (nothing else:
    case, inner spaces and punctuation count)."""
    return prediction.strip() == reference.strip()


def accuracy(predictions: Sequence[str], references: Sequence[str], tasks: Sequence[str]) -> dict:
    """Exact-match accuracy: ``{"overall": float, "n": int, "per_task": {task: float}, "per_task_n": {task: int}}``,
    tasks in order of first appearance."""
    if not len(predictions) == len(references) == len(tasks):
        raise ValueError(f"predictions, references and tasks differ in length: "
                         f"{len(predictions)}, {len(references)}, {len(tasks)}")
    if not tasks:
        raise ValueError("accuracy of no examples")
    hits, counts = collections.Counter(), collections.Counter()
    for prediction, reference, task in zip(predictions, references, tasks):
        counts[task] += 1
        hits[task] += exact_match(prediction, reference)
    return {"overall": sum(hits.values()) / len(tasks), "n": len(tasks),
            "per_task": {task: hits[task] / count for task, count in counts.items()}, "per_task_n": dict(counts)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Rows: one {\"prompt\", \"response\", \"task\"} JSON object a line.")
    parser.add_argument("out_dir", type=Path, help="folder to write train.jsonl and test.jsonl into")
    parser.add_argument("--train", type=int, default=4000, help="training rows (default 4000)")
    parser.add_argument("--test", type=int, default=400, help="held-out test rows (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    for split, n in (("train", args.train), ("test", args.test)):
        if n < 0:
            parser.error(f"--{split} must be >= 0, not {n}")
    for split, n in (("train", args.train), ("test", args.test)):
        rows = make_examples(n, args.seed, split)
        path = write_jsonl(rows, args.out_dir / f"{split}.jsonl")
        counts = collections.Counter(row["task"] for row in rows)
        print(f"{path}: {len(rows)} rows (" + ", ".join(f"{name} {counts[name]}" for name in TASKS) + ")")


if __name__ == "__main__":
    main()
