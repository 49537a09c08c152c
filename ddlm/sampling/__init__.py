"""Reverse samplers: the loop (``loop``: ``sample``), its predictors (``predictors``) and reverse steps (``steps``),
decoding transforms and confidence decoding (``decoding``), correctors and remasking (``correctors``),
first-hitting sampling (``first_hitting``), the exact score cache (``score_cache``) and guidance (``guidance``).

The loop's public names and the parts a user composes are importable from here, as ``ddlm.sampling.sample``."""

from .loop import (ABSORBING_ONLY, IMPLS, PREDICTORS, Analytic, Confidence, Corrector, Decoding, Euler, FirstHitting,
                   GridPredictor, Predictor, PredictorCorrector, Remask, ScoreEvaluator, TauLeaping, Temperature, TopK, TopP,
                   analytic_step, corrector_step, euler_step, remask_probability, remask_tokens, reverse_step, sample,
                   sample_categorical, sample_confidence, sample_first_hitting, tau_leaping_step, triton_available)

__all__ = ["ABSORBING_ONLY", "IMPLS", "PREDICTORS", "Analytic", "Confidence", "Corrector", "Decoding", "Euler", "FirstHitting",
           "GridPredictor", "Predictor", "PredictorCorrector", "Remask", "ScoreEvaluator", "TauLeaping", "Temperature", "TopK",
           "TopP", "analytic_step", "corrector_step", "euler_step", "remask_probability", "remask_tokens", "reverse_step",
           "sample", "sample_categorical", "sample_confidence", "sample_first_hitting", "tau_leaping_step", "triton_available"]
