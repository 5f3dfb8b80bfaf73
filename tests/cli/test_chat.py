"""``ol-jax chat``: scripted conversations end to end on a tiny Hugging Face folder."""

import json
import os

import pytest
import yaml

from ol_jax.cli._main import main

TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random Llama with a byte-level ChatML tokenizer, saved like HF does."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def write_config(tmp_path, model_folder, **extra):
    config = {
        "network_id": "chat-cli",
        "model": {"base_model_name": model_folder, "lora": {"rank": 2}},
        "training": {"learning_rate": 1e-3, "sequence_buckets": [96, 192]},
        "generation": {"max_new_tokens": 4},
        "metrics": {"anchor_prompts": ["A week has seven days."]},
        "checkpoint": {"save_every": 2},
        **extra,
    }
    path = tmp_path / "chat.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_scripted_chat_saves_and_resumes(tmp_path, model_folder, capsys):
    config = write_config(tmp_path, model_folder)
    script = tmp_path / "script.txt"
    script.write_text(
        "# a comment\nZorblax Quint lives in Varnholm.\n\nWhere does he live?\n"
        "Hello there.\n"
    )
    root = str(tmp_path / "networks")
    argv = ["chat", "--config", config, "--root", root, "--run-id", "s1"]
    assert main([*argv, "--script", str(script)]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant:") == 3
    assert "fact: yes" in out and "fact: no" in out
    run_dir = os.path.join(root, "chat-cli", "runs", "s1")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["turn"] for r in rows] == [1, 2, 3]
    assert rows[0]["is_fact"] == 1.0

    # Same run again: resumed at turn 3 (saved on exit), continues at 4.
    script.write_text("One more turn.\n")
    assert main([*argv, "--script", str(script)]) == 0
    out = capsys.readouterr().out
    assert "turn 3" in out and "turn 4 |" in out
    with open(os.path.join(run_dir, "run_metadata.json")) as f:
        entries = json.load(f)["entries"]
    assert entries[-1]["turn"] == 4
    assert len(entries[-1]["fact_memory"]["facts"]) == 1


def test_bad_lines_are_reported_and_skipped(tmp_path, model_folder, capsys):
    config = write_config(
        tmp_path, model_folder, chat={"max_input_chars": 10, "on_too_long": "error"}
    )
    script = tmp_path / "script.txt"
    script.write_text("Hi.\n" + "x" * 50 + "\nBye.\n")
    root = str(tmp_path / "networks")
    assert (
        main(["chat", "--config", config, "--root", root, "--script", str(script)]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out.count("assistant:") == 2
    assert "chat.max_input_chars=10" in captured.err


def test_missing_files_are_clear_errors(tmp_path, capsys):
    assert (
        main(
            [
                "chat",
                "--config",
                str(tmp_path / "nope.yaml"),
                "--script",
                str(tmp_path / "x.txt"),
            ]
        )
        == 2
    )
    assert "x.txt" in capsys.readouterr().err
    script = tmp_path / "s.txt"
    script.write_text("hi\n")
    assert (
        main(["chat", "--config", str(tmp_path / "nope.yaml"), "--script", str(script)])
        == 2
    )
    assert "config file not found" in capsys.readouterr().err
