"""Every sampler setting draws, for its fixed seed, exactly the tokens stored in tests/data/sampler_outputs.json
(the cases: tests/sampler_outputs.py). A failure names the setting whose draws changed."""

import pytest

from sampler_outputs import CASES, STORE, stored

STORED = stored()


@pytest.mark.parametrize("name, make", CASES, ids=[name for name, _ in CASES])
def test_sampler_setting_draws_the_stored_tokens(name, make):
    assert name in STORED, f"{name}: no stored output in {STORE.name}; store it with python tests/sampler_outputs.py --write"
    assert make().tolist() == STORED[name], (
        f"sampler setting {name!r} draws other tokens than before with the same seed; if that change is meant, "
        "rewrite the store with python tests/sampler_outputs.py --write and say so in the commit")


def test_every_stored_case_is_still_defined():
    names = [name for name, _ in CASES]
    assert len(names) == len(set(names)), "two cases share a name"
    assert sorted(set(STORED) - set(names)) == [], "stored cases no longer defined in tests/sampler_outputs.py"
