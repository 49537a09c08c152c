"""The built-in training recipes (``*.yaml``), installed as ``ddlm.builtin_recipes``; see ``ddlm.recipes``."""
