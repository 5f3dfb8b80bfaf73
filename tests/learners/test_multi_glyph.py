"""The multi-tenant glyph learner: many networks, one queue, one vmapped step."""

import os
import threading
from collections import Counter

import jax
import numpy as np
import pytest
import yaml

from ol_jax.learners import GlyphLearner, MultiGlyphLearner
from ol_jax.store import RunStore

SMALL = {"style_z_dim": 8, "image_size": 8, "hidden": [16, 16, 8]}
ONLINE = {"learning_rate": 0.05}


def write_config(root, name, *, seed=0, model=None, **online_learning):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    config = {
        "network_id": name,
        "seed": seed,
        "model": model or SMALL,
        "online_learning": {**ONLINE, **online_learning},
        "store": {"max_to_keep": None},
    }
    with open(os.path.join(root, name, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)


def networks(root, n, **kw):
    ids = [f"user{i}" for i in range(n)]
    for i, nid in enumerate(ids):
        write_config(root, nid, seed=i, **kw)
    return ids


def host(tree):
    return jax.device_get(tree)


def test_ratings_land_in_their_network_exactly_once(tmp_path):
    ids = networks(tmp_path, 4, update_frequency="batched", batch_size=4)
    with MultiGlyphLearner(tmp_path, ids) as learner:
        sent = {nid: learner.generate(nid, 16) for nid in ids}
        jobs = [(nid, g) for nid in ids for g in sent[nid]]
        errors = []

        def send(chunk):
            try:
                for nid, g in chunk:
                    learner.feedback(nid, g.id, 1 + hash(g.id + nid) % 10)
            except Exception as e:  # noqa: BLE001 - collected for the assert
                errors.append(e)

        threads = [threading.Thread(target=send, args=(jobs[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        learner.flush()
        metas = {nid: learner.stores[nid].metadata() for nid in ids}
        records = {nid: learner.stores[nid].feedback_records() for nid in ids}
        steps = host(learner.state.step)
        multi_steps = learner.multi_steps
    assert not errors
    for i, nid in enumerate(ids):
        got = Counter(g for e in metas[nid]["entries"] for g in e.get("glyph_ids", []))
        assert set(got) == {g.id for g in sent[nid]} and set(got.values()) == {1}
        # Each network's journal holds exactly its ratings, and every version
        # says how far into it its weights reach (16 ratings, batches of 4).
        assert sorted(r["id"] for r in records[nid]) == sorted(g.id for g in sent[nid])
        positions = [e["journal_position"] for e in metas[nid]["entries"]]
        assert positions == sorted(positions) and positions[-1] == 16
        updates = [e for e in metas[nid]["entries"] if e.get("update_applied")]
        assert len(updates) == int(steps[i]) >= 16 // 4
        assert metas[nid]["network_id"] == nid
    # Many networks per multi step: fewer calls than network updates.
    assert multi_steps < int(steps.sum())


def test_networks_without_feedback_are_unchanged(tmp_path):
    ids = networks(tmp_path, 5, min_ratings_before_update=0)
    with MultiGlyphLearner(tmp_path, ids) as learner:
        before = host(learner.state)
        for nid in ids[:2]:
            for g in learner.generate(nid, 3):
                learner.feedback(nid, g.id, 9)
            learner.wait()
        learner.flush()
        after = host(learner.state)
        versions = {nid: learner.stores[nid].versions() for nid in ids}
    before, after = (
        s._replace(key=jax.random.key_data(s.key)) for s in (before, after)
    )
    for i in range(2, len(ids)):  # every leaf of the others, bit for bit
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_array_equal(a[i], b[i]), before, after
        )
    assert [int(s) > 0 for s in after.step] == [True, True, False, False, False]
    assert all(len(versions[nid]) == 1 for nid in ids[2:])  # the initial one only
    assert all(len(versions[nid]) > 1 for nid in ids[:2])


def test_equals_separate_glyph_learners(tmp_path):
    ids = [f"m{i}" for i in range(3)]
    for nid in ids:
        write_config(tmp_path, nid, seed=3)
    solo_ids = [f"solo{i}" for i in range(3)]
    for nid in solo_ids:
        write_config(tmp_path, nid, seed=3)
    solos = [GlyphLearner(RunStore(tmp_path, nid)) for nid in solo_ids]
    rng = np.random.default_rng(0)
    with MultiGlyphLearner(tmp_path, ids) as multi:
        for t in range(5):
            key = jax.random.key(100 + t)
            for i, nid in enumerate(ids):
                if t >= 3 and i == 2:
                    continue  # network 2 stops getting feedback
                g = multi.generate(nid, 1, key=key)[0]
                s = solos[i].generate(1, key=key)[0]
                np.testing.assert_allclose(g.style_z, s.style_z, rtol=1e-5, atol=1e-5)
                r = int(rng.integers(1, 11))
                multi.feedback(nid, g.id, r)
                solos[i].feedback(s.id, r)
            multi.wait()
            for solo in solos:
                solo.wait()
        stacked = host(multi.state)
        bound = 5 * 0.05 * multi.config.online_learning.finetune_lr_scale
        for i, solo in enumerate(solos):
            own = host(solo.state)
            assert int(stacked.step[i]) == int(own.step)
            jax.tree.map(
                lambda a, b, i=i: np.testing.assert_allclose(
                    a[i], b, rtol=1e-5, atol=1e-5
                ),
                (stacked.params["policy"], stacked.extras),
                (own.params["policy"], own.extras),
            )
            # The fine-tuned decoder bias's gradient is a sum over pixels that nearly
            # cancels; Adam turns it into lr * sign(rounding), and vmap rounds
            # differently. So the decoder is within the steps' size, not at 1e-5.
            jax.tree.map(
                lambda a, b, i=i: np.testing.assert_allclose(a[i], b, atol=bound),
                stacked.params["decoder"],
                own.params["decoder"],
            )
            assert [e["ratings"] for e in multi.history[ids[i]]] == [
                e["ratings"] for e in solo.history
            ]
    for solo in solos:
        solo.close()


def test_bad_input_raises_and_changes_nothing(tmp_path):
    ids = networks(tmp_path, 2)
    with MultiGlyphLearner(tmp_path, ids) as learner:
        g = learner.generate("user0", 2)
        before = host(learner.state)
        for bad in (0, 11, 7.5, "7", True):
            with pytest.raises(ValueError, match="rating"):
                learner.feedback("user0", g[0].id, bad)
        with pytest.raises(ValueError, match="unknown glyph id"):
            learner.feedback("user1", g[0].id, 5)  # user0's glyph, not user1's
        with pytest.raises(ValueError, match="unknown network id"):
            learner.feedback("nobody", g[0].id, 5)
        with pytest.raises(ValueError, match="n must be"):
            learner.generate("user0", 0)
        learner.flush()
        after = host(learner.state)
    np.testing.assert_array_equal(
        before.params["policy"]["mean"], after.params["policy"]["mean"]
    )
    with pytest.raises(ValueError, match="at least one"):
        MultiGlyphLearner(tmp_path, [])
    with pytest.raises(ValueError, match="repeat"):
        MultiGlyphLearner(tmp_path, ["user0", "user0"])
    write_config(tmp_path, "other", learning_rate=0.01)
    with pytest.raises(ValueError, match="online_learning"):
        MultiGlyphLearner(tmp_path, ["user0", "other"])


def test_versions_restore_as_glyph_learner_runs(tmp_path):
    ids = networks(tmp_path, 3)
    with MultiGlyphLearner(tmp_path, ids) as learner:
        for _ in range(4):
            for g in learner.generate("user1", 1):
                learner.feedback("user1", g.id, 8)
            learner.wait()
        run_id = learner.run_ids["user1"]
        params = host(learner.state.params)
    # A GlyphLearner resumes the network's run from the multi learner's versions.
    with GlyphLearner(RunStore(tmp_path, "user1"), run_id=run_id) as solo:
        assert solo.ratings_seen == 4
        jax.tree.map(
            lambda a, b: np.testing.assert_array_equal(a[1], b),
            params,
            host(solo.state.params),
        )
