"""benchmarks/compare_originals.py without the original code (not stored here): its flash_attn stand-in against the
documented semantics, its reading of functions from a source file, its arguments, and the stored table rebuilt
from its JSON."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import compare_originals  # noqa: E402


def test_rotary_stand_in_rotates_q_and_k_pairs_in_place():
    """Each (x_j, x_{j + r/2}) of q and k turns by angle_j, as a complex number; v and dims past r are untouched."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 5, 3, 2, 10, generator=gen, dtype=torch.float64)
    angles = torch.rand(5, 3, generator=gen, dtype=torch.float64) * 6  # r = 6 of d = 10
    before = qkv.clone()
    out = compare_originals.rotary_qkv_(qkv, angles.cos(), angles.sin())
    assert out is qkv
    pairs = torch.complex(before[..., :3], before[..., 3:6]) * torch.polar(torch.ones_like(angles), angles)[None, :, None, None]
    torch.testing.assert_close(qkv[:, :, :2, :, :3], pairs.real[:, :, :2])
    torch.testing.assert_close(qkv[:, :, :2, :, 3:6], pairs.imag[:, :, :2])
    assert torch.equal(qkv[:, :, 2], before[:, :, 2]) and torch.equal(qkv[..., 6:], before[..., 6:])
    with pytest.raises(NotImplementedError):
        compare_originals.rotary_qkv_(qkv, angles.cos(), angles.sin(), interleaved=True)


def test_varlen_attention_stand_in_attends_within_each_sequence():
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 5, 2]
    qkv = torch.randn(sum(lengths), 3, 2, 4, generator=gen, dtype=torch.float64)
    cu_seqlens = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    out = compare_originals.varlen_attention(qkv, cu_seqlens, max(lengths), 0.0, causal=False)
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        q, k, v = (qkv[start:end, i].transpose(0, 1) for i in range(3))  # [H, n, d]
        want = F.scaled_dot_product_attention(q, k, v).transpose(0, 1)
        torch.testing.assert_close(out[start:end], want)
    scaled = compare_originals.varlen_attention(qkv, cu_seqlens, 5, softmax_scale=1.0)
    q, k, v = (qkv[:3, i].transpose(0, 1) for i in range(3))
    torch.testing.assert_close(scaled[:3], F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(0, 1))
    with pytest.raises(NotImplementedError):
        compare_originals.varlen_attention(qkv, cu_seqlens, 5, 0.1)


def test_original_functions_compile_only_the_named_ones(tmp_path):
    source = tmp_path / "diffusion.py"
    source.write_text("import not_installed_anywhere\nraise SystemExit('the file ran')\n\n"
                      "class Diffusion(Base):\n  def double(self, x):\n    return self.scale * helper(x)\n\n"
                      "  def other(self):\n    raise AssertionError\n\n"
                      "def helper(x):\n  return math.sqrt(x)\n")
    namespace = {"math": math}
    helper = compare_originals.original_functions(source, ("helper",), namespace)["helper"]
    methods = compare_originals.original_functions(source, ("double",), namespace, within="Diffusion")
    host = type("Host", (), methods)()
    host.scale = 2.0
    assert helper(9.0) == 3.0 and host.double(16.0) == 8.0 and not hasattr(host, "other")
    with pytest.raises(SystemExit, match="lacks \\['absent'\\]"):
        compare_originals.original_functions(source, ("double", "absent"), {}, within="Diffusion")


def test_arguments_are_checked(capsys):
    for argv, message in [([], "give --llada-code, --dream-code and/or --mdlm-code"),
                          (["--mdlm-code", "x", "--source", "MDLM"], "--source takes FAMILY=TEXT")]:
        with pytest.raises(SystemExit):
            compare_originals.parse_args(argv)
        assert message in capsys.readouterr().err


def test_stored_table_is_rebuilt_from_its_json(tmp_path):
    results = BENCHMARKS / "results"
    record = json.loads((results / "compare_originals.json").read_text())
    stored = (results / "compare_originals.md").read_text()
    assert compare_originals.markdown(record) == stored
    assert {row["family"] for row in record["rows"]} == {"LLaDA", "Dream", "MDLM"}
    assert set(record["families"]) == {"LLaDA", "Dream", "MDLM"}
    shutil.copy(results / "compare_originals.json", tmp_path)
    compare_originals.main(["--report-only", "--quiet", "--results", str(tmp_path)])
    assert (tmp_path / "compare_originals.md").read_text() == stored
