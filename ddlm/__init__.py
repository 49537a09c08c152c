"""ddlm: discrete diffusion language models (score entropy / SEDD family).

Forward processes (``Uniform``, ``Absorbing``), noise schedules (``LogLinear``, ``Geometric``),
score-entropy losses (``ddlm.losses``), reverse samplers (``ddlm.sampling``), likelihood
bounds (``ddlm.likelihood``), finite Markov chains and Brownian motion (``ddlm.markov``,
``ddlm.brownian``), exact oracles (``SequenceOracle``) and the ratio network as a
transformers model (``DDLMConfig``, ``DDLMForDiffusion``; registered with AutoConfig/AutoModel)
and ``DiffusionPipeline`` to generate, infill and score text.
"""

from . import brownian, likelihood, losses, markov, sampling
from .model import DDLMConfig, DDLMForDiffusion
from .oracle import SequenceOracle
from .pipeline import DiffusionPipeline
from .processes import Absorbing, Graph, Uniform
from .schedules import Geometric, LogLinear

__version__ = "0.1.0"

__all__ = ["Absorbing", "DDLMConfig", "DDLMForDiffusion", "DiffusionPipeline", "Geometric", "Graph", "LogLinear", "SequenceOracle", "Uniform", "brownian", "likelihood", "losses", "markov", "sampling"]
