"""The module names of ddlm 0.1's flat layout stay importable for this version: each is the new module
itself (one object, so monkeypatching either name patches both), and the three modules that became
packages re-export their public names."""

import importlib
import subprocess
import sys

import pytest

from ddlm._moved import MOVED


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_an_old_module_name_is_the_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_old_imports_and_attributes_work_in_a_fresh_interpreter():
    code = ("import ddlm, ddlm.losses, ddlm.model.modeling\n"
            "from ddlm.train import train\n"
            "from ddlm.pipeline import DiffusionPipeline\n"
            "from ddlm.sampling import sample, PREDICTORS\n"
            "from ddlm.likelihood import nll_bound, T_SAMPLING\n"
            "from ddlm.evaluation import score_texts, load_model\n"
            "import ddlm.core.losses, ddlm.training.loop, ddlm.text.pipeline, ddlm.sampling.loop\n"
            "assert ddlm.losses is ddlm.core.losses and ddlm.train is ddlm.training.loop\n"
            "assert DiffusionPipeline is ddlm.text.pipeline.DiffusionPipeline is ddlm.DiffusionPipeline\n"
            "assert sample is ddlm.sampling.loop.sample and ddlm.model.modeling is ddlm.models.modeling\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("package, module", [("ddlm.sampling", "ddlm.sampling.loop"), ("ddlm.likelihood", "ddlm.likelihood.bounds"),
                                             ("ddlm.evaluation", "ddlm.evaluation.scoring")])
def test_a_module_that_became_a_package_re_exports_its_public_names(package, module):
    package, module = importlib.import_module(package), importlib.import_module(module)
    assert package.__all__ and all(getattr(package, name) is getattr(module, name) for name in package.__all__)


def test_an_unknown_name_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ddlm.no_such_module")
