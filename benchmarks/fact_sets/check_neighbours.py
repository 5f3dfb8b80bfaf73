"""Which neighbour questions the base chat model answers correctly.

Loads the model of ``configs/chat_smollm2.yaml`` as shipped, with an untouched
adapter (B = 0, so the base model), asks every neighbour question greedily
(32 new tokens, batches of 16) and counts a reply as correct when it contains
the expected answer (case-insensitive), as ``benchmarks/fact_learning.py``
judges facts. By default it checks the list hard-coded in ``make_dev_set.py``;
``--file`` checks the ``neighbours`` of a fact-set JSON file instead.

Run from the repository root (loads the real model; a minute or two on CPU)::

    PYTHONPATH=. python3 benchmarks/fact_sets/check_neighbours.py [--file F]

Exit status 1 when any neighbour is answered wrongly.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 16


def _neighbours(file: Path | None) -> list[tuple[str, str]]:
    if file is None:
        sys.path.insert(0, str(HERE))
        from make_dev_set import NEIGHBOURS

        return list(NEIGHBOURS)
    data = json.loads(file.read_text(encoding="utf-8"))
    items = data["neighbours"] if isinstance(data, dict) else data
    return [(n["question"], n["answer"]) for n in items]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--file",
        type=Path,
        default=None,
        help="fact-set JSON whose neighbours to check",
    )
    p.add_argument("--config", default="configs/chat_smollm2.yaml")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", type=Path, default=None, help="write every reply here")
    args = p.parse_args(argv)

    from ol_jax.learners import ChatLearner, load_chat_config

    pairs = _neighbours(args.file)
    learner = ChatLearner(
        load_chat_config(args.config), root=tempfile.mkdtemp(prefix="neighbours_")
    )
    rows = []
    try:
        for i in range(0, len(pairs), BATCH):
            chunk = pairs[i : i + BATCH]
            replies = learner.answers(
                [q for q, _ in chunk], max_new_tokens=args.max_new_tokens
            )
            for (q, a), r in zip(chunk, replies, strict=True):
                rows.append(
                    {
                        "question": q,
                        "answer": a,
                        "reply": r,
                        "correct": a.lower() in r.lower(),
                    }
                )
    finally:
        learner.close()
    for row in rows:
        mark = "ok  " if row["correct"] else "FAIL"
        q, a, reply = row["question"], row["answer"], row["reply"][:90]
        print(f"{mark} {q!r} expects {a!r}: {reply!r}")
    right = sum(r["correct"] for r in rows)
    print(f"base model correct on {right} of {len(rows)} neighbours")
    if args.json is not None:
        args.json.write_text(
            json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return 0 if right == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
