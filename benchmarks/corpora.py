"""Where the benchmarks find their text: ``--data-dir DIR`` (default ``../shared/data`` beside the
checkout, when it exists), holding the files named below.

A user's clone has no ``../shared``: each missing file is refused in one line saying how to get it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
HOW_TO_GET = {  # file -> how to make it
    "wikitext2.valid.txt": "datasets.load_dataset('Salesforce/wikitext', 'wikitext-2-v1', split='validation'), "
                           "its 'text' rows written one after another as they are",
    "ptb.valid.txt": "datasets.load_dataset('ptb-text-only/ptb_text_only', split='validation'), "
                     "each 'sentence' written as ' ' + sentence + ' \\n'",
    "tinyshakespeare.txt": "the char-rnn corpus, "
                           "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir DIR``; its default is ``../shared/data`` when that folder exists."""
    default = DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else None
    parser.add_argument("--data-dir", type=Path, default=default,
                        help=f"folder with {', '.join(HOW_TO_GET)} (default: {default or 'none; ../shared/data is absent'})")


def corpus(data_dir: Path | None, name: str) -> Path:
    """The path of corpus ``name`` in ``data_dir``; exits with status 2 and one line when it is missing."""
    path = None if data_dir is None else Path(data_dir) / name
    if path is None or not path.is_file():
        where = "no --data-dir given" if data_dir is None else f"{path} does not exist"
        print(f"error: this benchmark reads {name} ({where}); make it from {HOW_TO_GET[name]}, "
              "and pass its folder with --data-dir DIR", file=sys.stderr)
        sys.exit(2)
    return path
