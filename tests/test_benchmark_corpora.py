"""The benchmarks' corpora come from --data-dir (by default the project machines' shared data folder, where it
exists); a missing file is refused in one line that says how to make it."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def corpora_module():
    spec = importlib.util.spec_from_file_location("corpora", ROOT / "benchmarks" / "corpora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("data_dir", [None, "empty"])
def test_a_missing_corpus_is_one_line_naming_how_to_get_it(tmp_path, capsys, data_dir):
    corpora = corpora_module()
    for name, how in corpora.HOW_TO_GET.items():
        with pytest.raises(SystemExit) as exit_info:
            corpora.corpus(data_dir and tmp_path, name)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and name in err and how in err and "--data-dir" in err


def test_a_present_corpus_is_its_path(text_data):
    corpora = corpora_module()
    assert corpora.corpus(text_data, "wikitext2.valid.txt") == text_data / "wikitext2.valid.txt"
    assert set(corpora.HOW_TO_GET) == {"wikitext2.valid.txt", "ptb.valid.txt", "tinyshakespeare.txt"}
