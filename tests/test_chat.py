"""``DiffusionPipeline.chat`` and ``ddlm chat`` on a tiny LLaDA directory whose tokenizer carries a chat template."""

import io
import shutil

import pytest

import ddlm
from ddlm.sampling.decoding import llada_options
from test_open_weight_pipelines import llada_dir  # noqa: F401  (the fixture)

TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_dir(llada_dir, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(llada_dir, path)
    pipe = ddlm.DiffusionPipeline.from_pretrained(path, progress=False)
    pipe.tokenizer.chat_template = TEMPLATE
    pipe.tokenizer.save_pretrained(path)
    return path


def test_chat_is_block_decoding_after_the_rendered_conversation(chat_dir):
    pipe = ddlm.DiffusionPipeline.from_pretrained(chat_dir, progress=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    answer = pipe.chat(messages, max_new_tokens=12, block_size=4, seed=0, progress=False, **llada_options())
    prompt = "<|start|>system\nBe brief.<|eot_id|><|start|>user\nHi<|eot_id|><|start|>assistant\n"
    assert pipe.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    expected = pipe.generate(prompt=prompt, max_new_tokens=12, block_size=4, steps=4, stop_at_eos=True, seed=0, progress=False,
                             **llada_options())[0]
    assert answer == expected[len(prompt):]


def test_streamed_blocks_add_up_to_the_answer(chat_dir):
    pipe = ddlm.DiffusionPipeline.from_pretrained(chat_dir, progress=False)
    pieces, stats = [], {}
    answer = pipe.chat([{"role": "user", "content": "Hello"}], max_new_tokens=12, block_size=3, steps=3, seed=1,
                       progress=False, stream=pieces.append, stats=stats)
    assert "".join(pieces) == answer and 1 <= len(pieces) <= stats["blocks"]
    eos = pipe.tokenizer.eos_token
    assert eos not in answer


def test_bad_chat_input(chat_dir, llada_dir):  # noqa: F811
    pipe = ddlm.DiffusionPipeline.from_pretrained(chat_dir, progress=False)
    with pytest.raises(TypeError, match="non-empty list"):
        pipe.chat("Hello")
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\] must be one of"):
        pipe.chat([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match=r'messages\[1\] must be a dict with "role" and "content"'):
        pipe.chat([{"role": "user", "content": "x"}, {"content": "y"}])
    base = ddlm.DiffusionPipeline.from_pretrained(llada_dir, progress=False)
    with pytest.raises(ValueError, match="has no chat template"):
        base.chat([{"role": "user", "content": "x"}])


def test_the_chat_command_streams_answers_to_a_message_and_to_stdin(chat_dir, monkeypatch, capsys):
    from ddlm.cli import main

    pipe = ddlm.DiffusionPipeline.from_pretrained(chat_dir, progress=False)
    expected = pipe.chat([{"role": "user", "content": "Hi"}], max_new_tokens=8, block_size=4, seed=0, progress=False,
                         **llada_options())
    main(["chat", str(chat_dir), "Hi", "--max-new-tokens", "8", "--block-size", "4", "--decoding", "llada", "--quiet"])
    assert capsys.readouterr().out == expected + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nAnd then?\n"))
    main(["chat", str(chat_dir), "--max-new-tokens", "8", "--block-size", "4", "--decoding", "llada", "--quiet"])
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == expected.split("\n")[0] and len(lines) >= 3
    with pytest.raises(SystemExit):
        main(["chat", str(chat_dir), "Hi", "--num-samples", "2", "--quiet"])
    assert "one answer per message" in capsys.readouterr().err
