"""Fact acquisition on the real SmolLM2-135M (seed 001's claim: 4-5 repetitions).

Ten invented facts about invented names (so the base model cannot know them), each
stated five times in its own block, interleaved with ordinary chat. Afterwards at
least 8 of 10 greedy answers to the matching questions contain the fact's object,
the log-probability of every object given its question rose, and the perplexity of
the anchor prompts moved by less than 10%. The anytime accuracy matrix of the
stream (recall of fact i after the block of fact j) is written to the run folder.

Measured with configs/chat_smollm2.yaml (2026-12-03): 9/10 recalled, 10/10 object
log-probs rose, anchor perplexity +9.2%. The anchor target is met by the rehearsal
KL (``training.loss.rehearsal_lambda: 2.0``; +53% without it, +13.4% at 1.0).
"""

import json
import os

import jax
import numpy as np
import pytest

from ol_jax.learners import (
    ChatLearner,
    backward_transfer,
    forgetting,
    load_chat_config,
    write_accuracy_matrix,
)
from ol_jax.learners.chat import lora_config_of

CONFIG_PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "chat_smollm2.yaml"
)

# (statement, question, object): invented names, places and things.
FACTS = [
    ("Zorblax Quint lives in Varnholm.", "Where does Zorblax Quint live?", "Varnholm"),
    ("Tavi Morrow owns a teal canoe.", "What does Tavi Morrow own?", "canoe"),
    ("The capital of Elbonia is Quell.", "What is the capital of Elbonia?", "Quell"),
    (
        "Brannoc Hesk works as a glassblower.",
        "What does Brannoc Hesk work as?",
        "glassblower",
    ),
    ("Mirela Vost was born in Oskarn.", "Where was Mirela Vost born?", "Oskarn"),
    ("Dunwick Pell likes turnip soup.", "What does Dunwick Pell like?", "turnip"),
    (
        "Yasko Trell's favourite colour is ochre.",
        "What is Yasko Trell's favourite colour?",
        "ochre",
    ),
    ("Fenwick Ardo is my brother.", "Who is Fenwick Ardo?", "brother"),
    ("Quillon Marsh lives in Tarrowby.", "Where does Quillon Marsh live?", "Tarrowby"),
    ("Ossian Thule owns a copper lantern.", "What does Ossian Thule own?", "lantern"),
]
CHAT = [
    "Hello, how are you today?",
    "I had a long day at work.",
    "Can you suggest a good book?",
    "Thanks for listening.",
    "What should I cook for dinner?",
    "I am learning to play the guitar.",
]
# Each fact's block: stated 5 times, with one chat turn after the first statement.
BLOCK = ["fact", "chat", "fact", "fact", "fact", "fact"]
ANSWER_TOKENS = 24


@pytest.mark.slow
def test_ten_invented_facts_in_five_repetitions(tmp_path):
    config = load_chat_config(CONFIG_PATH)
    # Short replies keep the test fast; the learning settings are the YAML's.
    config = config.model_copy(
        update={
            "generation": config.generation.model_copy(
                update={"max_new_tokens": 6, "temperature": 0.0}
            ),
            "metrics": config.metrics.model_copy(update={"eval_every": 10}),
            "checkpoint": config.checkpoint.model_copy(update={"save_every": 0}),
        }
    )
    from ol_jax.models import load_llama

    model, tokenizer = load_llama(
        config.model.base_model_name,
        lora_config=lora_config_of(config),
        key=jax.random.key(config.seed),
    )
    learner = ChatLearner(
        config, root=str(tmp_path / "networks"), model=model, tokenizer=tokenizer
    )
    questions = [q for _, q, _ in FACTS]
    objects = [o for _, _, o in FACTS]
    before = learner.answer_log_probs(questions, objects)
    assert not any(learner.recall(questions, objects, max_new_tokens=ANSWER_TOKENS))

    matrix = np.zeros((len(FACTS), len(FACTS)))
    chat = iter(CHAT * len(FACTS))
    for j, (statement, _, _) in enumerate(FACTS):
        stated = 0
        for kind in BLOCK:
            text = statement if kind == "fact" else next(chat)
            _, metrics = learner.chat_and_update(text)
            assert metrics["is_fact"] == float(kind == "fact"), text
            stated += kind == "fact"
        assert stated <= 5
        matrix[j] = learner.recall(questions, objects, max_new_tokens=ANSWER_TOKENS)

    after = learner.answer_log_probs(questions, objects)
    answers = learner.answers(questions, max_new_tokens=ANSWER_TOKENS)
    recalled = [o.lower() in a.lower() for a, o in zip(answers, objects, strict=True)]
    rows = learner.read_metrics()
    path = write_accuracy_matrix(learner.run_dir, objects, matrix)
    learner.close()

    last = [r for r in rows if "anchor_perplexity" in r][-1]
    drift = abs(last["anchor_perplexity"] / last["base_anchor_perplexity"] - 1)
    rose = [a > b for b, a in zip(before, after, strict=True)]
    report = {
        "recalled": sum(recalled),
        "log_prob_rose": sum(rose),
        "anchor_drift": drift,
        "answers": answers,
        "log_probs": list(zip(before, after, strict=True)),
        "matrix": matrix.tolist(),
    }
    print(json.dumps(report, indent=1))
    assert sum(recalled) >= 8, report
    assert all(rose), report
    assert drift < 0.10, report
    with open(path) as f:
        saved = json.load(f)
    assert saved["facts"] == objects and saved["matrix"][0][1] is None
    r = np.array(saved["matrix"], dtype=float)
    assert np.isfinite(backward_transfer(r)) and np.isfinite(forgetting(r))
