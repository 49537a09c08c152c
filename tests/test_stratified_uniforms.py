"""The one stratified-time sampler (``stratified_uniforms``) behind ``sample_times``, ``pooled_times`` and
``batch_uniforms``: their draws for a fixed seed are the ones stored in tests/data/stratified_draws.json bit for
bit, recorded before the three shared it (stored estimates and the exact resume of training runs depend on
them); each layout puts its slots in the strata it says; bad arguments are refused."""

import json
import pathlib
import sys

import pytest
import torch

from ddlm.likelihood import T_SAMPLING, batch_uniforms, pooled_times, sample_times, stratified_uniforms

STORE = pathlib.Path(__file__).parent / "data" / "stratified_draws.json"
CALLS = {"sample_times": sample_times, "pooled_times": pooled_times, "batch_uniforms": batch_uniforms}
SHAPES = {"sample_times": [(3, 4, 2.0, 0), (2, 6, 1.0, 7), (1, 16, 3.0, 123)],
          "pooled_times": [(3, 1, 2.0, 0), (5, 2, 2.0, 1), (4, 4, 1.5, 7)],
          "batch_uniforms": [(7, 0), (8, 1), (32, 123)]}


def case_names() -> list[str]:
    """Every stored case, 'function/method/arguments/seed' (antithetic only with even pairs)."""
    names = []
    for call, shapes in SHAPES.items():
        for method in T_SAMPLING:
            for *args, seed in shapes:
                if method != "antithetic" or args[1 if call != "batch_uniforms" else 0] % 2 == 0:
                    names.append("/".join([call, method, *map(str, args), str(seed)]))
    return names


def draw(name: str) -> dict:
    """The case's outputs (as lists) and the generator's next float64 uniform after the call."""
    call, method, *args, seed = name.split("/")
    numbers = [float(a) if "." in a else int(a) for a in args]
    generator = torch.Generator().manual_seed(int(seed))
    if call == "batch_uniforms":
        outputs = [CALLS[call](numbers[0], method, generator)]
    else:
        outputs = CALLS[call](numbers[0], numbers[1], method, numbers[2], generator)
    outputs = [None if x is None else x.tolist() for x in outputs]
    return {"outputs": outputs, "next_draw": torch.rand(1, generator=generator, dtype=torch.float64).item()}


@pytest.mark.parametrize("name", case_names())
def test_the_draws_are_the_stored_ones_bit_for_bit(name):
    stored = json.loads(STORE.read_text())
    assert draw(name) == stored[name], f"{name} draws other times than before with the same seed (or uses the generator differently)"


def test_every_stored_case_is_still_drawn():
    assert sorted(json.loads(STORE.read_text())) == sorted(case_names())


@pytest.mark.parametrize("method", T_SAMPLING)
@pytest.mark.parametrize("layout", ["sequence", "pooled", "batch"])
def test_each_layout_fills_its_strata(layout, method):
    size, rows = 12, (3 if layout == "sequence" else None)
    u, stratum = stratified_uniforms(size, method, layout, torch.Generator().manual_seed(4), rows=rows)
    assert u.dtype == torch.float64 and u.shape == ((3, size) if rows else (size,))
    assert bool(((u >= 0) & (u < 1)).all() if layout == "batch" else ((u > 0) & (u <= 1)).all())
    if method == "antithetic":
        assert torch.equal(u[..., 0::2] + u[..., 1::2], torch.ones_like(u[..., 0::2])) and stratum is None
    if method == "stratified":
        strata = size if layout == "batch" else size // 2
        assert torch.equal(torch.floor(u * strata).long().clamp(max=strata - 1), stratum.expand_as(u))
        assert torch.equal(stratum.sort().values, torch.arange(size) // (size // strata))
        if layout == "sequence":  # in order, two adjacent slots per stratum
            assert torch.equal(stratum, torch.arange(size) // 2)
    if method == "iid":
        assert stratum is None


@pytest.mark.parametrize("args, kwargs, message", [
    ((4, "stratified", "rows"), {}, r"layout must be one of \('sequence', 'pooled', 'batch'\)"),
    ((4, "sobol", "batch"), {}, "t_sampling must be one of"),
    ((4, "stratified", "pooled"), {"rows": 2}, "rows must be an int >= 0 with layout='sequence'"),
    ((4, "iid", "sequence"), {"rows": -1}, "rows must be an int >= 0"),
    ((5, "stratified", "pooled"), {}, r"size must be an even int >= 2 for t_sampling='stratified', got 5"),
    ((5, "antithetic", "batch"), {}, r"size must be an even int >= 2 for t_sampling='antithetic'"),
    ((0, "iid", "batch"), {}, r"size must be an int >= 1 for t_sampling='iid', got 0"),
])
def test_bad_arguments_are_refused(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        stratified_uniforms(*args, **kwargs)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:  # rewrite the store: only for a change of the draws that is meant
    STORE.write_text("{\n" + ",\n".join(f" {json.dumps(name)}: {json.dumps(draw(name))}" for name in case_names()) + "\n}\n")
