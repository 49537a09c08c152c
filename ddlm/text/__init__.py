"""Text in, text out: corpora and packing (``corpora``), tokenizers and UTF-8-safe decoding
(``tokenization``), loading a model directory (``loading``), per-text bound records and blocking
(``scores``) and ``DiffusionPipeline`` (``pipeline``: generate, infill, score), which delegates to
``generation``, ``blocks``, ``templates``, ``infill`` and ``scoring``."""
