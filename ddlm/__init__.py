"""ddlm: discrete diffusion language models (score entropy / SEDD family).

Forward processes (``Uniform``, ``Absorbing``), noise schedules (``LogLinear``, ``Geometric``),
score-entropy losses (``ddlm.losses``), reverse samplers (``ddlm.sampling``), likelihood
bounds (``ddlm.likelihood``), finite Markov chains and Brownian motion (``ddlm.markov``,
``ddlm.brownian``), exact oracles (``SequenceOracle``), the ratio network as a transformers
model (``DDLMConfig``, ``DDLMForDiffusion``; registered with AutoConfig/AutoModel when
``ddlm.models`` is imported) and ``DiffusionPipeline`` to generate, infill and score text.
The packages, lowest layer first: ``core``, ``models`` / ``theory`` / ``continuous``,
``sampling`` / ``likelihood``, ``text``, ``evaluation``, ``training``, then ``cli``
(docs/reference/development.md draws them).

Every public name is imported on first use, so ``import ddlm`` and the ``ddlm`` command line
start without torch.
"""

import sys as _sys
from importlib.machinery import ModuleSpec as _ModuleSpec
from importlib.util import module_from_spec as _module_from_spec
from pathlib import Path as _Path

from . import _moved


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

__version__ = "0.1.0"

_moved.install()  # the module names of 0.1's flat layout (ddlm.losses, ddlm.train, ...) stay importable

# Public name -> (module, attribute; None: the module itself). Imported on first use (PEP 562), so that
# `import ddlm` and the command line start without torch; ddlm.models registers DDLMConfig /
# DDLMForDiffusion with transformers' AutoConfig / AutoModel when it is imported.
_LAZY = {"Absorbing": ("core.processes", "Absorbing"), "Graph": ("core.processes", "Graph"),
         "Uniform": ("core.processes", "Uniform"), "Geometric": ("core.schedules", "Geometric"),
         "LogLinear": ("core.schedules", "LogLinear"), "DDLMConfig": ("models", "DDLMConfig"),
         "DDLMForDiffusion": ("models", "DDLMForDiffusion"), "DiffusionPipeline": ("text.pipeline", "DiffusionPipeline"),
         "SequenceOracle": ("theory.oracle", "SequenceOracle"), "brownian": ("theory.brownian", None),
         "likelihood": ("likelihood", None), "losses": ("core.losses", None), "markov": ("theory.markov", None),
         "sampling": ("sampling", None)}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    """Import a public name's module (or any submodule, as ``ddlm.pipeline``) on first access and cache it here."""
    from importlib import import_module

    if name not in _LAZY:
        try:
            return import_module(f"{__name__}.{name}")  # the import binds it in this module
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module_name, attribute = _LAZY[name]
    module = import_module(f"{__name__}.{module_name}")
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
