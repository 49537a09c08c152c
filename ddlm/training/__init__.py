"""Training through accelerate: recipes (``recipes``), the loop with exact resume and export (``loop``: ``train``) and
its parts (``objective``: what a step computes; ``state``: what a checkpoint carries; ``reports``: what a run shows),
crash-safe checkpoints (``checkpoints``), and fine-tuning (``finetune``, ``adapt``, ``lora``)."""
