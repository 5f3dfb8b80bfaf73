"""Fact learning on the real SmolLM2-135M, measured as knowledge editing (seed 001).

Ten facts of ten kinds from the development set (``benchmarks/fact_sets/
dev_sample10.json``, made by ``make_dev_set.py``, not written for this test), each
stated five times in its own block with one distractor turn after the first
statement, with the shipped ``configs/chat_smollm2.yaml``. Afterwards, with greedy
32-token answers: at least 9 of 10 questions and 7 of 10 paraphrased questions
answered with the fact's object (efficacy, generalization), at least 95% of the
neighbour questions answered exactly as by the base model (locality), and the
anchor perplexity within 10% of the base. The stream's accuracy matrix is written
to the run folder. Fact detection is checked on the whole development set (at
least 95% of its statements) and on 100 lines of chit-chat, questions and
requests (at most 5%).
"""

import json
import os

import numpy as np
import pytest

from ol_jax.learners import (
    ChatLearner,
    FactDetector,
    load_chat_config,
    load_fact_set,
    run_fact_stream,
    write_accuracy_matrix,
)

HERE = os.path.dirname(__file__)
CONFIG_PATH = os.path.join(HERE, "..", "..", "configs", "chat_smollm2.yaml")
FACT_SETS = os.path.join(HERE, "..", "..", "benchmarks", "fact_sets")


def test_fact_detection_on_the_development_set():
    detector = FactDetector(load_chat_config(CONFIG_PATH).fact_detection)
    facts = load_fact_set(os.path.join(FACT_SETS, "dev.json"))["facts"]
    assert len(facts) >= 200
    missed = [f["statement"] for f in facts if detector.detect(f["statement"]) is None]
    assert len(missed) <= 0.05 * len(facts), missed
    with open(os.path.join(FACT_SETS, "non_facts.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    assert len(lines) == 100
    false = [line for line in lines if detector.detect(line) is not None]
    assert len(false) <= 5, false


@pytest.mark.slow
def test_ten_development_facts_are_learned_kept_and_nothing_else_broken(tmp_path):
    config = load_chat_config(CONFIG_PATH)
    # Short greedy replies keep the test fast; the learning settings are the YAML's.
    config = config.model_copy(
        update={
            "generation": config.generation.model_copy(
                update={"max_new_tokens": 8, "temperature": 0.0}
            ),
            "checkpoint": config.checkpoint.model_copy(update={"save_every": 0}),
        }
    )
    fact_set = load_fact_set(os.path.join(FACT_SETS, "dev_sample10.json"))
    fact_set["neighbours"] = fact_set["neighbours"][:40]
    assert len(fact_set["facts"]) == 10
    with ChatLearner(config, root=str(tmp_path / "networks")) as learner:
        result = run_fact_stream(learner, fact_set, reps=5, accuracy_matrix=True)
        path = write_accuracy_matrix(
            learner.run_dir,
            [f["answer"] for f in fact_set["facts"]],
            np.array(result["accuracy_matrix"]),
        )
        evals = [r for r in learner.read_metrics() if r.get("kind") == "edit_eval"]
    print(json.dumps({k: v for k, v in result.items() if k != "details"}, indent=1))
    assert result["fact_turns_detected"] == result["fact_turns"] == 50, result
    assert result["efficacy"] >= 9, result["details"]
    assert result["generalization"] >= 7, result["details"]
    assert result["locality"] >= 0.95, result["neighbours_changed"]
    assert abs(result["anchor_ppl_drift"]) < 0.10, result
    assert result["backward_transfer"] >= -0.1, result["accuracy_matrix"]
    assert evals and evals[-1]["efficacy"] == result["efficacy"]
    with open(path) as f:
        assert json.load(f)["matrix"][0][1] is None
