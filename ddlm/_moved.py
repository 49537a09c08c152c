"""Module names of ddlm 0.1's flat layout, kept importable for this version.

Each old name is the new module itself, one object under two names (``ddlm.losses is ddlm.core.losses``),
so old imports, attribute access and monkeypatching keep working with no warning. ``ddlm.sampling``,
``ddlm.likelihood`` and ``ddlm.evaluation`` are packages now, re-exporting their old modules' public names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {  # old module -> new module
    "ddlm.checks": "ddlm.core.checks", "ddlm.score": "ddlm.core.score", "ddlm.processes": "ddlm.core.processes",
    "ddlm.schedules": "ddlm.core.schedules", "ddlm.losses": "ddlm.core.losses", "ddlm.dse_backends": "ddlm.core.dse_backends",
    "ddlm.model": "ddlm.models", "ddlm.model.configuration": "ddlm.models.configuration",
    "ddlm.model.modeling": "ddlm.models.modeling", "ddlm.model.sedd": "ddlm.models.sedd",
    "ddlm.oracle": "ddlm.theory.oracle", "ddlm.markov": "ddlm.theory.markov", "ddlm.brownian": "ddlm.theory.brownian",
    "ddlm.decoding": "ddlm.sampling.decoding", "ddlm.correctors": "ddlm.sampling.correctors",
    "ddlm.first_hitting": "ddlm.sampling.first_hitting", "ddlm.score_cache": "ddlm.sampling.score_cache",
    "ddlm.guidance": "ddlm.sampling.guidance",
    "ddlm.data": "ddlm.text.corpora", "ddlm.tokenization": "ddlm.text.tokenization", "ddlm.pipeline": "ddlm.text.pipeline",
    "ddlm.zero_shot": "ddlm.evaluation.zero_shot", "ddlm.sample_quality": "ddlm.evaluation.sample_quality",
    "ddlm.lm_eval_model": "ddlm.evaluation.lm_eval_model",
    "ddlm.train": "ddlm.training.loop", "ddlm.recipes": "ddlm.training.recipes", "ddlm.checkpoints": "ddlm.training.checkpoints",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the already imported new module."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of ``MOVED``."""

    def find_spec(self, fullname: str, path, target=None):
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """First on ``sys.meta_path``: ``ddlm.model.modeling`` must not be found a second time, as a copy, in the
    folder of ``ddlm.model`` (which is ``ddlm.models``)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
