"""ddlm: discrete diffusion language models (score entropy / SEDD family)."""

__version__ = "0.1.0"
