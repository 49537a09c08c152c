"""The demonstration command runs end to end and prints comparable numbers."""

import re

from ddlm.cli import main


def test_demo_prints_sampler_tv_and_bounds_against_exact_answers(capsys):
    main(["demo", "--samples", "400", "--steps", "8", "--num-t", "16", "--seed", "3"])
    out = capsys.readouterr().out
    for predictor in ["euler", "tau_leaping", "analytic"]:
        assert len(re.findall(rf"{predictor} \(8 steps\): TV 0\.\d{{4}}", out)) == 2
    assert len(re.findall(r"bound \d+\.\d{3} \+- \d+\.\d{3} nats .* true -log p = \d+\.\d{3}", out)) == 6
