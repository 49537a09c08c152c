"""Names of the options the library checks and the command line offers.

This module imports nothing, so that ``ddlm --help`` and argument errors build the parser without
torch; ``ddlm.sampling``, ``ddlm.decoding`` and ``ddlm.likelihood`` re-export these names.
"""

PREDICTORS = ("euler", "tau_leaping", "analytic", "first_hitting", "confidence")
ABSORBING_ONLY = ("first_hitting", "confidence")  # predictors that need an absorbing process
CONFIDENCES = ("max_prob", "margin", "entropy", "prob", "random")
UNMASK_SCHEDULES = ("linear", "cosine", "even")
T_SAMPLING = ("stratified", "antithetic", "iid")  # how u in (0, 1] is drawn for the bound's t integral
