"""The mathematics every other package builds on: forward processes (``processes``), noise schedules
(``schedules``), score-entropy losses and their backends (``losses``, ``dse_backends``, ``dse_numerics``;
the Triton kernels are ``ddlm.kernels``), the score-function protocol (``score``), categorical draws
(``draws``), and the argument checks, option names and file manifests every layer uses (``checks``,
``choices``, ``manifest``). Imports nothing from the rest of ddlm."""
