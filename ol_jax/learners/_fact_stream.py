"""A stream of facts told to a chat learner, measured as knowledge editing is.

:func:`run_fact_stream` states each fact of a fact set ``reps`` times in its own
block (the first statement followed by one distractor chat turn), with an update
after every turn, then measures efficacy, generalization and locality
(:meth:`ChatLearner.evaluate_edits`) and the anchor perplexity drift. The fact
set is JSON (:func:`load_fact_set`)::

    {"facts": [{"statement": str, "question": str, "paraphrase": str,
                "answer": str}, ...],
     "neighbours": [{"question": str, "answer": str}, ...],
     "distractor_chat": [str, ...]}
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ol_jax.learners._continual import backward_transfer, forgetting

__all__ = ["load_fact_set", "run_fact_stream"]

_FACT_KEYS = ("statement", "question", "paraphrase", "answer")


def _strings(item: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where} must be an object, got {type(item).__name__}")
    for k in keys:
        if not isinstance(item.get(k), str) or not item[k].strip():
            raise ValueError(
                f"{where}.{k} must be a non-empty string, got {item.get(k)!r}"
            )
    return dict(item)


def load_fact_set(path: str | os.PathLike[str]) -> dict[str, list]:
    """Reads and validates a fact-set JSON file (schema in the module docstring).

    Extra keys are kept (a fact may carry ``paraphrases``, a list).

    Raises:
      ValueError: naming the file and the bad field.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON fact set ({e})") from None
    try:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"the top level must be an object, got {type(data).__name__}"
            )
        for key in ("facts", "neighbours", "distractor_chat"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{key} must be a list, got {data.get(key)!r:.60}")
        if not data["facts"]:
            raise ValueError("facts must hold at least one fact, got []")
        if not data["distractor_chat"]:
            raise ValueError("distractor_chat must hold at least one line, got []")
        facts = [
            _strings(f, _FACT_KEYS, f"facts[{i}]") for i, f in enumerate(data["facts"])
        ]
        neighbours = [
            _strings(n, ("question", "answer"), f"neighbours[{i}]")
            for i, n in enumerate(data["neighbours"])
        ]
        chat = data["distractor_chat"]
        bad = [i for i, c in enumerate(chat) if not isinstance(c, str) or not c.strip()]
        if bad:
            raise ValueError(f"distractor_chat[{bad[0]}] must be a non-empty string")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return {"facts": facts, "neighbours": neighbours, "distractor_chat": list(chat)}


def run_fact_stream(
    learner: Any,
    fact_set: Mapping[str, list],
    *,
    reps: int = 5,
    answer_tokens: int = 32,
    accuracy_matrix: bool = False,
    on_turn: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """States every fact ``reps`` times and measures what the learner kept.

    Fact ``i``'s block is ``[statement, distractor_chat[i % n], statement x
    (reps - 1)]``, each turn a ``chat_and_update``. Before the stream the base
    model's greedy answers to the neighbour questions are recorded; after it
    :meth:`~ol_jax.learners.ChatLearner.evaluate_edits` runs (logged in the run's
    metrics).

    Args:
      learner: a fresh :class:`~ol_jax.learners.ChatLearner`.
      fact_set: as :func:`load_fact_set` returns.
      reps: statements per fact, >= 1.
      answer_tokens: length of the greedy evaluation answers.
      accuracy_matrix: after each fact's block, ask the questions of every fact
        so far: ``R[j][i]`` = fact ``i`` recalled after block ``j`` (returned as
        ``accuracy_matrix`` with ``backward_transfer`` and ``forgetting``).
      on_turn: called as ``on_turn(done, total, metrics_row)`` after each turn.

    Returns:
      The figures: ``facts``, ``fact_turns``, ``fact_turns_detected``,
      ``efficacy``, ``generalization`` (counts of facts), ``locality``,
      ``neighbour_kl``, ``anchor_ppl_drift`` (relative change of the anchor
      perplexity), ``s_per_turn``, ``fact_update_s`` (median update of a fact
      turn), and per-fact ``details``.
    """
    if not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps must be an int >= 1, got {reps!r}")
    facts, chat = fact_set["facts"], fact_set["distractor_chat"]
    neighbours = [n["question"] for n in fact_set["neighbours"]]
    base_answers = learner.answers(neighbours, max_new_tokens=answer_tokens)
    base_anchor = learner._anchor_scores()
    total = len(facts) * (reps + 1)
    detected, fact_updates, matrix = 0, [], []
    done, seconds = 0, 0.0
    for i, fact in enumerate(facts):
        block = [(fact["statement"], True), (chat[i % len(chat)], False)]
        block += [(fact["statement"], True)] * (reps - 1)
        t0 = time.perf_counter()
        for text, is_statement in block:
            _, row = learner.chat_and_update(text)
            if is_statement:
                detected += int(row["is_fact"] > 0)
                if row["is_fact"]:
                    fact_updates.append(row["update_ms"] / 1e3)
            done += 1
            if on_turn is not None:
                on_turn(done, total, row)
        seconds += time.perf_counter() - t0
        if accuracy_matrix:
            recalled = learner.recall(
                [f["question"] for f in facts[: i + 1]],
                [f["answer"] for f in facts[: i + 1]],
                max_new_tokens=answer_tokens,
            )
            matrix.append([float(x) for x in recalled] + [0.0] * (len(facts) - i - 1))
    edits = learner.evaluate_edits(
        facts, neighbours, base_answers, max_new_tokens=answer_tokens
    )
    anchor = learner._anchor_scores()
    drift = (
        math.exp(anchor["nll"] - base_anchor["nll"]) - 1.0
        if anchor is not None and base_anchor is not None
        else float("nan")
    )
    fact_updates.sort()
    retention = {}
    if accuracy_matrix:
        retention = {
            "accuracy_matrix": matrix,
            "backward_transfer": backward_transfer(matrix),
            "forgetting": forgetting(matrix),
        }
    return {
        **retention,
        "facts": len(facts),
        "reps": reps,
        "fact_turns": len(facts) * reps,
        "fact_turns_detected": detected,
        "efficacy": edits["efficacy"],
        "generalization": edits["generalization"],
        "locality": edits["locality"],
        "neighbour_kl": edits["neighbour_kl"],
        "anchor_ppl_drift": drift,
        "s_per_turn": seconds / total,
        "fact_update_s": fact_updates[len(fact_updates) // 2] if fact_updates else None,
        "details": [
            {
                "statement": f["statement"],
                "answer": f["answer"],
                "question_reply": edits["replies"][i],
                "paraphrase_reply": edits["replies"][len(facts) + i],
                "efficacy": edits["efficacy_hits"][i],
                "generalization": edits["generalization_hits"][i],
            }
            for i, f in enumerate(facts)
        ],
        "neighbours_changed": [
            {"question": q, "base": b, "now": n}
            for q, b, n in zip(
                neighbours, base_answers, edits["neighbour_replies"], strict=True
            )
            if b.strip() != n.strip()
        ],
    }
