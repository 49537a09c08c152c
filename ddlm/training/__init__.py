"""Training through accelerate: recipes (``recipes``), the loop with exact resume and export (``loop``:
``train``), and crash-safe checkpoints (``checkpoints``)."""
