"""The lm-evaluation-harness model: lm_eval's own simple_evaluate and CLI on local tasks, exact AR log-likelihoods
against a direct chain-rule computation, and stop sequences of generate_until."""

import importlib.metadata
import json
import math
import os
import sys

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local JSON only; nothing from the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

import lm_eval.evaluator  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from ddlm import DDLMConfig  # noqa: E402
from ddlm.lm_eval_model import DDLMEvalModel, cut_at_stop, main  # noqa: E402
from ddlm.pipeline import DiffusionPipeline  # noqa: E402
from helpers import randomised, save_tiny_pipeline  # noqa: E402

QUESTIONS = [
    {"question": "To be, or not to", "choices": ["be", "see", "go"], "answer": 0},
    {"question": "Now is the winter of our", "choices": ["discontent", "summer", "king"], "answer": 0},
    {"question": "What light through yonder window", "choices": ["breaks", "falls"], "answer": 0},
]
PASSAGES = [{"text": "First Citizen: Before we proceed any further, hear me speak."}, {"text": "All: Speak, speak."}]
PROMPTS = [{"prompt": "ROMEO: ", "answer": "Ay"}, {"prompt": "JULIET: O", "answer": " Romeo"}]


def task_yaml(name: str, data: str, cache: str, body: str) -> str:
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {cache}\n"
            f"test_split: test\n{body}")


@pytest.fixture(autouse=True)
def quick_lm_eval(monkeypatch):
    """Skip lm_eval's bookkeeping that costs seconds and is not under test: indexing its thousands of built-in
    tasks (only the local ones are used) and collecting environment details with pip in a subprocess."""
    index = TaskManager.__init__
    monkeypatch.setattr(TaskManager, "__init__", lambda self, *args, **kwargs: index(self, *args, **{**kwargs, "include_defaults": False}))
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Three tasks over local JSON files: multiple choice, rolling perplexity and generation."""
    root = tmp_path_factory.mktemp("tasks")
    cache = root / "cache"
    for name, records in [("mc", QUESTIONS), ("rolling", PASSAGES), ("gen", PROMPTS)]:
        (root / f"{name}.json").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    (root / "mc.yaml").write_text(task_yaml("ddlm_test_mc", root / "mc.json", cache,
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n"))
    (root / "rolling.yaml").write_text(task_yaml("ddlm_test_rolling", root / "rolling.json", cache,
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"))
    (root / "gen.yaml").write_text(task_yaml("ddlm_test_gen", root / "gen.json", cache,
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: [' ']\n  max_gen_toks: 6\nmetric_list:\n  - metric: exact_match\n"))
    return root


@pytest.fixture(scope="module")
def diffusion_dir(tmp_path_factory, byte_tokenizer):
    return save_tiny_pipeline(tmp_path_factory.mktemp("diffusion"), byte_tokenizer, 32)


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory, byte_tokenizer):
    path = tmp_path_factory.mktemp("ar")
    model = randomised(DDLMConfig.from_preset("tiny", vocab_size=len(byte_tokenizer), max_position_embeddings=32, objective="ar"), seed=3)
    model.save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path


def evaluate(model_dir, task_dir, tasks, **model_args):
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_dir, **model_args}.items())
    return lm_eval.simple_evaluate(model="ddlm", model_args=args, tasks=tasks, task_manager=TaskManager(include_path=str(task_dir)),
                                   device="cpu", batch_size=2, bootstrap_iters=0, log_samples=True)


def chain_rule(model, eos: int, context_ids: list[int], continuation_ids: list[int]) -> float:
    """sum over the continuation's tokens of log_softmax(logits) read at them, after [EOS] + context."""
    ids = torch.tensor([[eos] + context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0]
    return sum(float(log_probs[i, ids[0, i + 1]]) for i in range(len(context_ids), ids.shape[1] - 1))


def direct_ar_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    assert whole[:len(context_ids)] == context_ids  # the split is unambiguous for these strings
    return chain_rule(model, tokenizer.eos_token_id, context_ids, whole[len(context_ids):])


def direct_ar_rolling(model, tokenizer, text: str, block: int) -> float:
    """Blocks of ``block`` tokens, each after EOS (the rule of ddlm eval)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return sum(chain_rule(model, tokenizer.eos_token_id, [], ids[i:i + block]) for i in range(0, len(ids), block))


def test_simple_evaluate_gives_an_ar_models_exact_chain_rule_log_likelihoods(ar_dir, task_dir):
    from ddlm.evaluation import load_model

    out = evaluate(ar_dir, task_dir, ["ddlm_test_mc", "ddlm_test_rolling"])
    model, tokenizer = load_model(ar_dir)
    correct = []
    for sample in out["samples"]["ddlm_test_mc"]:
        got = [resp[0][0] for resp in sample["resps"]]
        expected = [direct_ar_loglikelihood(model, tokenizer, *args) for args in sample["arguments"]]
        assert got == pytest.approx(expected, abs=1e-5)
        correct.append(float(max(range(len(expected)), key=expected.__getitem__) == sample["doc"]["answer"]))
    assert out["results"]["ddlm_test_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    blocks = []
    for sample in out["samples"]["ddlm_test_rolling"]:
        (text,) = sample["arguments"][0]
        blocks.append(math.ceil(len(tokenizer(text)["input_ids"]) / 32))
        assert sample["resps"][0][0] == pytest.approx(direct_ar_rolling(model, tokenizer, text, 32), abs=1e-5)
    assert max(blocks) > 1 and min(blocks) == 1  # one passage spans two blocks, the other fits one
    assert math.isfinite(out["results"]["ddlm_test_rolling"]["word_perplexity,none"])


def test_simple_evaluate_gives_a_diffusion_models_bounds(diffusion_dir, task_dir):
    """The untrained absorbing model predicts every token uniformly: its bound is log 300 nats a token in expectation."""
    out = evaluate(diffusion_dir, task_dir, ["ddlm_test_mc", "ddlm_test_rolling"], num_t=32)
    pipe = DiffusionPipeline.from_pretrained(diffusion_dir)
    nats, tokens = 0.0, 0
    for sample in out["samples"]["ddlm_test_mc"]:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            nats -= resp[0][0]
            tokens += pipe.conditional_nll([context], [continuation], 2)[0].tokens
    assert nats / tokens == pytest.approx(math.log(300), rel=0.2)  # pooled over 8 requests of 32 t each
    assert 0 <= out["results"]["ddlm_test_mc"]["acc,none"] <= 1
    bits, nbytes = out["results"]["ddlm_test_rolling"]["bits_per_byte,none"], sum(len(p["text"].encode()) for p in PASSAGES)
    assert bits * nbytes * math.log(2) == pytest.approx(sum(len(pipe.tokenizer(p["text"])["input_ids"]) for p in PASSAGES)
                                                        * math.log(300), rel=0.2)


def test_a_diffusion_models_loglikelihood_is_minus_the_pipelines_conditional_bound(diffusion_dir, caplog):
    """One batch, the same seed: the very numbers of DiffusionPipeline.conditional_nll, and their standard errors logged."""
    lm = DDLMEvalModel(str(diffusion_dir), num_t=6, seed=4)
    pairs = [(q["question"], " " + choice) for q in QUESTIONS for choice in q["choices"]]
    with caplog.at_level("INFO", logger="lm_eval.ddlm"):
        got = lm.loglikelihood([Instance("loglikelihood", {}, pair, 0) for pair in pairs], disable_tqdm=True)
    scores = lm.pipeline.conditional_nll([c for c, _ in pairs], [c for _, c in pairs], 6, seed=4, truncate_context=True)
    assert [value for value, _ in got] == pytest.approx([-s.nll for s in scores], abs=1e-9)
    assert [greedy for _, greedy in got] == [s.greedy for s in scores]
    total = math.sqrt(sum(s.stderr**2 for s in scores))
    assert f"{len(pairs)} loglikelihood requests" in caplog.text and f"of their sum {total:.4f} nats" in caplog.text


def instance(context: str, **gen_kwargs) -> Instance:
    return Instance("generate_until", {}, (context, gen_kwargs), 0)


@pytest.mark.parametrize("model_fixture", ["ar_dir", "diffusion_dir"])
def test_generate_until_cuts_the_generation_before_the_first_stop_string(model_fixture, request):
    lm = DDLMEvalModel(str(request.getfixturevalue(model_fixture)), steps=4, seed=5)
    contexts = ["ROMEO: ", "JULIET: O"]
    free = lm.generate_until([instance(c, max_gen_toks=10, do_sample=True) for c in contexts])
    stopped = lm.generate_until([instance(c, max_gen_toks=10, do_sample=True, until=["e", "a"]) for c in contexts])
    assert stopped == [cut_at_stop(text, ["e", "a"]) for text in free]  # the same draws, cut
    assert not any("e" in text or "a" in text for text in stopped)
    greedy = lm.generate_until([instance("ROMEO: ", max_gen_toks=5)] * 2)
    assert greedy[0] == greedy[1]  # lm_eval's default (do_sample False) is greedy: deterministic


def test_cut_at_stop_cuts_at_the_earliest_stop_string():
    assert cut_at_stop("abc. def\nghi", ["\n", "."]) == "abc"
    assert cut_at_stop("abc", ["x"]) == "abc" and cut_at_stop("abc", []) == "abc"


def test_bad_model_arguments_name_the_argument(ar_dir):
    for kwargs, name in [({"num_t": 0}, "num_t"), ({"predictor": "nope"}, "predictor"), ({"batch_size": "big"}, "batch_size"),
                         ({"seed": -1}, "seed"), ({"dtype": "int8"}, "dtype")]:
        with pytest.raises(ValueError, match=name):
            DDLMEvalModel(str(ar_dir), **kwargs)
    sizes = [DDLMEvalModel(str(ar_dir), **kwargs).requests_per_call for kwargs in
             [{"batch_size": "auto"}, {"batch_size": "auto:2", "max_batch_size": 4}, {"batch_size": "8"}, {"batch_size": 3}]]
    assert sizes == [None, 4, 8, 3]  # lm_eval's --batch_size forms; auto: ddlm's memory-bounded default
    lm = DDLMEvalModel(str(ar_dir))
    with pytest.raises(ValueError, match="not supported by the ddlm model: \\['num_beams'\\]"):
        lm.generate_until([instance("a", num_beams=2)])


def test_the_name_ddlm_resolves_through_lm_evals_registry_and_entry_point():
    from lm_eval.api.registry import get_model

    assert get_model("ddlm") is DDLMEvalModel  # the lookup lm_eval's command line makes for --model ddlm
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group="lm_eval.models")}
    assert "ddlm" in points, "reinstall the package (pip install -e .) so its lm_eval.models entry point is declared"
    assert points["ddlm"].load() is DDLMEvalModel


def test_the_command_line_runs_a_task_with_model_ddlm(ar_dir, task_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ddlm-lm-eval", "--model", "ddlm", "--model_args", f"pretrained={ar_dir}", "--tasks",
                                      "ddlm_test_gen", "--include_path", str(task_dir), "--device", "cpu"])
    main()
    out = capsys.readouterr().out
    assert "ddlm_test_gen" in out and "exact_match" in out
