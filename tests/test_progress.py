"""Progress bars: nested bars leave no blank lines, and progress=False silences transformers' "Loading weights"
and, at the training export, "Writing model shards"."""

import re

import pytest
from transformers.utils import logging

from ddlm.pipeline import DiffusionPipeline
from helpers import save_tiny_pipeline


@pytest.fixture
def transformers_bars_on():
    """transformers' progress bars enabled for the test (an earlier `ddlm ... --quiet` may have turned them off)."""
    was_enabled = logging.is_progress_bar_enabled()
    logging.enable_progress_bar()
    yield
    (logging.enable_progress_bar if was_enabled else logging.disable_progress_bar)()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, byte_tokenizer):
    return save_tiny_pipeline(tmp_path_factory.mktemp("model"), byte_tokenizer, 16)


def test_nested_sampling_bars_are_cleared_and_leave_no_blank_lines(model_dir, capsys):
    pipe = DiffusionPipeline.from_pretrained(model_dir, progress=False)
    capsys.readouterr()
    pipe.generate(4, length=8, steps=3, batch_size=2, seed=0)  # an outer "batches" bar over two sampling bars
    nested = capsys.readouterr().err
    assert "\n\n" not in nested and "batches: 100%" in nested
    assert not re.search(r"sampling \(analytic\):[^\x1b\n]*\n", nested)  # no inner bar left on a line of its own
    pipe.generate(2, length=8, steps=3, seed=0)  # alone, the sampling bar stays
    assert "sampling (analytic): 100%" in capsys.readouterr().err


def test_progress_false_silences_the_loading_bar_and_restores_the_setting(model_dir, transformers_bars_on, capsys):
    DiffusionPipeline.from_pretrained(model_dir)
    assert "Loading weights" in capsys.readouterr().err  # the bar this test looks for
    DiffusionPipeline.from_pretrained(model_dir, progress=False)
    assert "Loading weights" not in capsys.readouterr().err
    assert logging.is_progress_bar_enabled()


def test_training_with_progress_false_writes_no_bar_at_the_export(tmp_path, text_data, transformers_bars_on, capfd):
    from ddlm.recipes import recipe_from_dict
    from ddlm.train import train
    from test_train import tiny_recipe

    values = tiny_recipe(tmp_path, text_data, steps=2, eval_every=2, save_every=2, sample_every=2)
    train(recipe_from_dict(values), progress=False)
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "training" not in err
    assert logging.is_progress_bar_enabled()
