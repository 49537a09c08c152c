"""ddlm: discrete diffusion language models (score entropy / SEDD family).

Forward processes (``Uniform``, ``Absorbing``), noise schedules (``LogLinear``, ``Geometric``),
score-entropy losses (``ddlm.losses``), reverse samplers (``ddlm.sampling``), likelihood
bounds (``ddlm.likelihood``), finite Markov chains and Brownian motion (``ddlm.markov``,
``ddlm.brownian``), exact oracles (``SequenceOracle``) and the ratio network as a
transformers model (``DDLMConfig``, ``DDLMForDiffusion``; registered with AutoConfig/AutoModel)
and ``DiffusionPipeline`` to generate, infill and score text.
"""

import sys as _sys
from importlib.machinery import ModuleSpec as _ModuleSpec
from importlib.util import module_from_spec as _module_from_spec
from pathlib import Path as _Path


def _mount_checkout_folders() -> None:
    """In a source checkout, import the top-level ``kernels/`` and ``recipes/`` folders as
    ``ddlm.kernels`` and ``ddlm.builtin_recipes``.

    Those folders have no ``__init__.py`` on purpose: a package folder in the repository root would
    shadow any installed distribution of the same name whenever Python starts there (transformers
    imports the PyPI package ``kernels``). Neither Python nor setuptools' editable finder imports a
    mapped folder without ``__init__.py``, so it is mounted here as a namespace package. A wheel
    installs the folders as ``ddlm/kernels`` and ``ddlm/builtin_recipes``, found the ordinary way.
    """
    here = _Path(__file__).resolve().parent
    for name, folder in (("kernels", "kernels"), ("builtin_recipes", "recipes")):
        source = here.parent / folder
        if f"{__name__}.{name}" in _sys.modules or (here / name).is_dir() or not source.is_dir():
            continue
        spec = _ModuleSpec(f"{__name__}.{name}", None, is_package=True)
        spec.submodule_search_locations = [str(source)]
        _sys.modules[spec.name] = globals()[name] = _module_from_spec(spec)


_mount_checkout_folders()

from . import brownian, likelihood, losses, markov, sampling  # noqa: E402
from .model import DDLMConfig, DDLMForDiffusion  # noqa: E402
from .oracle import SequenceOracle  # noqa: E402
from .pipeline import DiffusionPipeline  # noqa: E402
from .processes import Absorbing, Graph, Uniform  # noqa: E402
from .schedules import Geometric, LogLinear  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Absorbing", "DDLMConfig", "DDLMForDiffusion", "DiffusionPipeline", "Geometric", "Graph", "LogLinear", "SequenceOracle", "Uniform", "brownian", "likelihood", "losses", "markov", "sampling"]
