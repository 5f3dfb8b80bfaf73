"""``ol-jax chat``: scripted conversations end to end on a tiny Hugging Face folder."""

import io
import json
import os
import sys
import time

import jax
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.cli._main import main
from ol_jax.store import read_run_metadata

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
    entries = read_run_metadata(run_dir)["entries"]
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


def _rows(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_script_echoes_each_line_before_its_reply(tmp_path, model_folder, capsys):
    config = write_config(tmp_path, model_folder)
    script = tmp_path / "script.txt"
    script.write_text("First message.\nSecond message.\n")
    root = str(tmp_path / "networks")
    argv = ["chat", "--config", config, "--root", root, "--script", str(script)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = [
        line.split(":", 1)[0]
        for line in lines
        if line.startswith(("you:", "assistant:"))
    ]
    assert kinds == ["you", "assistant", "you", "assistant"]
    assert "you: First message." in lines and "you: Second message." in lines


def test_unknown_commands_are_an_error_not_a_turn(tmp_path, model_folder, capsys):
    config = write_config(tmp_path, model_folder)
    script = tmp_path / "script.txt"
    script.write_text("/foo bar\n/HELP\nHello.\n/usr/bin is a folder.\n")
    root = str(tmp_path / "networks")
    argv = ["chat", "--config", config, "--root", root, "--run-id", "c"]
    assert main([*argv, "--script", str(script)]) == 0
    captured = capsys.readouterr()
    assert "unknown command /foo" in captured.err
    for name in ("/help", "/save", "/quit", "/exit"):
        assert name in captured.err
    assert "commands: /help" in captured.out  # /HELP is the known /help
    # Only the two messages were turns: nothing of "/foo" reached the model.
    assert captured.out.count("assistant:") == 2
    assert len(_rows(os.path.join(root, "chat-cli", "runs", "c"))) == 2


@given(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40),
    st.sampled_from(["/save", "/Quit", "/help", "/x-1", "/unknown_2"]),
)
def test_parse_command(text, command):
    from ol_jax.cli._chat import parse_command

    # A line that does not start with "/" is a message.
    if not text.lstrip().startswith("/"):
        assert parse_command(text) is None
        assert parse_command(f"1/2 {text}") is None
    # A command word followed by anything (after whitespace) is that command.
    assert parse_command(f"  {command} {text}") == command.lower()
    # A path is a message, not a command.
    assert parse_command(f"/usr/bin {text}") is None


def test_undo_point_restores_a_turn_exactly(tmp_path, model_folder):
    from ol_jax.learners.chat import ChatLearner

    config = write_config(tmp_path, model_folder)
    with ChatLearner(config, root=str(tmp_path / "n"), run_id="u") as learner:
        learner.chat_and_update("Hello there.")
        before = jax.tree.map(np.array, learner.state.params)
        point = learner.undo_point()
        learner.chat_and_update("Zorblax Quint lives in Varnholm.")
        assert learner.turn == 2 and len(learner.memory) == 1
        assert not all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree.leaves(before),
                jax.tree.leaves(learner.state.params),
                strict=True,
            )
        )
        learner.undo_to(point)
        assert learner.turn == 1 and len(learner.memory) == 0
        jax.tree.map(np.testing.assert_array_equal, learner.state.params, before)
        assert [r["turn"] for r in learner.read_metrics()] == [1]
        # The undo point is not consumed by the next update (it holds copies).
        learner.chat_and_update("Hello again.")
        learner.undo_to(point)
        jax.tree.map(np.testing.assert_array_equal, learner.state.params, before)


# A driver that holds each update until the test creates the gate file, so that
# the terminal tests see the reply before the update and can press Ctrl-C in it.
_DRIVER = """
import os, sys, time
from ol_jax.learners.chat import ChatLearner
from ol_jax.cli._main import main
from ol_jax.store import read_run_metadata

gate = os.environ["OL_TEST_GATE"]
real_learn = ChatLearner.learn

def learn(self, *args, **kwargs):
    print("[update started]", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.02)
    os.remove(gate)
    return real_learn(self, *args, **kwargs)

ChatLearner.learn = learn

# With OL_TEST_PIECE set, the reply's stream is held after its first piece is
# taken, until OL_TEST_PIECE_GATE exists; the piece, then the whole reply, are written
# to OL_TEST_PIECE so the test knows what the screen must show.
if "OL_TEST_PIECE" in os.environ:
    import ol_jax.learners.chat as chat

    piece_file = os.environ["OL_TEST_PIECE"]
    piece_gate = os.environ["OL_TEST_PIECE_GATE"]
    real_deltas = chat.text_deltas

    def text_deltas(ids, decode):
        pieces = []
        for piece in real_deltas(ids, decode):
            pieces.append(piece)
            yield piece
            if len(pieces) == 1:  # the chat asks for the next piece: held
                with open(piece_file + ".tmp", "w", encoding="utf-8") as f:
                    f.write(piece)
                os.replace(piece_file + ".tmp", piece_file)
                while not os.path.exists(piece_gate):
                    time.sleep(0.02)
                os.remove(piece_gate)
        with open(piece_file + ".tmp", "w", encoding="utf-8") as f:
            f.write("".join(pieces))
        os.replace(piece_file + ".tmp", piece_file + ".whole")

    chat.text_deltas = text_deltas
sys.exit(main(sys.argv[1:]))
"""


def _saved(root, run_id, config):
    from ol_jax.learners.chat import load_chat_config
    from ol_jax.store import RunStore

    store = RunStore(root, "chat-cli", config=load_chat_config(config))
    store.start_run(run_id)
    try:
        entries = store.metadata()["entries"]
        trees = {v: store.restore(v) for v in store.versions()}
    finally:
        store.close()
    return entries, trees


def _drive_terminal_chat(child, gate):
    import pexpect

    child.expect("you:")
    child.sendline("Hello there.")
    # The reply is on screen while the update has not finished (it is held).
    child.expect("assistant")
    child.expect(r"\[update started\]")
    gate.touch()
    child.expect(r"turn 1 \|")
    child.expect("you:")

    # Ctrl-C during the update of a fact turn: undone, saved, the chat goes on.
    child.sendline("Zorblax Quint lives in Varnholm.")
    child.expect(r"\[update started\]")
    child.sendintr()
    child.expect("this turn is cancelled")
    gate.touch()
    child.expect("its update was undone")
    child.expect("you:")

    # Ctrl-C twice during a turn: the turn is undone and the chat ends.
    child.sendline("One more turn.")
    child.expect(r"\[update started\]")
    child.sendintr()
    child.expect("this turn is cancelled")
    child.sendintr()
    child.expect("quitting")
    gate.touch()
    child.expect(pexpect.EOF)


def test_terminal_chat_replies_first_and_ctrl_c_undoes_the_turn(tmp_path, model_folder):
    pexpect = pytest.importorskip("pexpect")
    config = write_config(tmp_path, model_folder, checkpoint={"save_every": 1})
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    gate = tmp_path / "gate"
    root = str(tmp_path / "networks")
    env = dict(os.environ, PYTHONPATH=_REPO, OL_TEST_GATE=str(gate), TERM="xterm")
    argv = [str(driver), "chat", "--config", config, "--root", root, "--run-id", "t"]
    child = pexpect.spawn(
        sys.executable,
        argv,
        env=env,
        encoding="utf-8",
        timeout=300,
        dimensions=(40, 160),
    )
    child.logfile_read = log = io.StringIO()
    try:
        _drive_terminal_chat(child, gate)
    finally:
        print(log.getvalue()[-6000:])  # the screen, in the report of a failure
        child.close(force=True)
    assert child.exitstatus == 0
    assert "Traceback" not in log.getvalue()

    run_dir = os.path.join(root, "chat-cli", "runs", "t")
    assert [r["turn"] for r in _rows(run_dir)] == [1]
    entries, trees = _saved(root, "t", config)
    first = next(e for e in entries if e.get("turn") == 1)
    last = max(entries, key=lambda e: e.get("version", -1))
    assert last["turn"] == 1 and last["fact_memory"]["facts"] == []
    # The cancelled turns' updates were saved mid-turn (save_every 1), then
    # superseded by a save of the state before them.
    assert len(trees) >= 3
    jax.tree.map(
        np.testing.assert_array_equal,
        trees[last["version"]]["params"],
        trees[first["version"]]["params"],
    )


def _wait_for_file(path, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text(encoding="utf-8")


def test_terminal_chat_streams_the_reply_before_the_update(tmp_path, model_folder):
    pexpect = pytest.importorskip("pexpect")
    config = write_config(tmp_path, model_folder, generation={"max_new_tokens": 12})
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    gate, piece, piece_gate = tmp_path / "gate", tmp_path / "piece", tmp_path / "pg"
    root = str(tmp_path / "networks")
    env = dict(
        os.environ,
        PYTHONPATH=_REPO,
        OL_TEST_GATE=str(gate),
        OL_TEST_PIECE=str(piece),
        OL_TEST_PIECE_GATE=str(piece_gate),
        TERM="xterm",
    )
    argv = [str(driver), "chat", "--config", config, "--root", root, "--run-id", "p"]
    child = pexpect.spawn(
        sys.executable, argv, env=env, encoding="utf-8", timeout=300,
        dimensions=(40, 160),
    )  # fmt: skip
    child.logfile_read = log = io.StringIO()
    try:
        child.expect("you:")
        child.sendline("Hello there.")
        child.expect("assistant")
        # The first piece is on screen while the rest of the reply is not yet
        # generated (the stream is held) and nothing has been learned.
        first = _wait_for_file(piece)
        child.expect_exact(first)
        assert "[update started]" not in log.getvalue()
        assert not (tmp_path / "piece.whole").exists()
        piece_gate.touch()
        child.expect(r"\[update started\]")
        whole = _wait_for_file(tmp_path / "piece.whole")
        assert len(whole) > len(first) and whole.startswith(first)
        gate.touch()
        child.expect(r"turn 1 \|")
        child.expect("you:")

        # Ctrl-C while the reply streams: the generation stops, nothing is
        # learned, and the chat goes on.
        piece.unlink()
        child.sendline("One more turn.")
        _wait_for_file(piece)
        child.sendintr()
        child.expect("this turn is cancelled")
        piece_gate.touch()
        child.expect("nothing was learned")
        child.expect("you:")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        print(log.getvalue()[-6000:])  # the screen, in the report of a failure
        child.close(force=True)
    assert child.exitstatus == 0
    assert "Traceback" not in log.getvalue()
    # The whole reply was shown between the prompt and the update.
    screen = log.getvalue()
    reply_at = screen.index("assistant")
    update_at = screen.index("[update started]")
    assert reply_at < update_at
    run_dir = os.path.join(root, "chat-cli", "runs", "p")
    assert [r["turn"] for r in _rows(run_dir)] == [1]
