"""Memory (`classify/memory.py`): the class-balanced k-nearest-neighbour vote against a brute-force count."""

from __future__ import annotations

import numpy as np
import pytest

from dlsa_cli.classify import memory as mem
from dlsa_cli.classify.memory import VOTE_FLOORS, MemoryBank, choose_memory, choose_weight, log_vote


def _brute_vote(bank_x: np.ndarray, bank_y: np.ndarray, q: np.ndarray, k: int, c: int,
                own: np.ndarray | None = None) -> np.ndarray:
    """The vote by hand: cosine similarity to every bank row, the k best (own row left out), 1 / n_class each."""
    b = bank_x / np.linalg.norm(bank_x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    n = np.bincount(bank_y, minlength=c)
    out = np.zeros((len(q), c))
    for i, row in enumerate(qn):
        sim = b @ row
        if own is not None and own[i] >= 0:
            sim[own[i]] = -np.inf
        for j in np.argsort(-sim, kind="stable")[:k]:
            out[i, bank_y[j]] += 1.0 / n[bank_y[j]]
        out[i] /= out[i].sum()
    return out


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [20, 10, 4, 2])
    x = rng.standard_normal((len(y), 6)) + 3.0 * np.eye(6)[y]
    return x.astype(np.float32), y


@pytest.mark.parametrize("chunks", [False, True])
def test_vote_equals_a_brute_force_count(toy, monkeypatch, chunks):
    x, y = toy
    if chunks:  # the running top-k across bank and query chunks gives the same neighbours
        monkeypatch.setattr(mem, "BANK_CHUNK", 7)
        monkeypatch.setattr(mem, "QUERY_CHUNK", 5)
    bank = MemoryBank.build(x, y, 4, k=5)
    q = np.random.default_rng(1).standard_normal((9, 6)).astype(np.float32)
    # float16 storage moves similarities by ~1e-3; compare against the same rounded bank
    rounded = bank.features.float().numpy()
    np.testing.assert_allclose(bank.vote(q), _brute_vote(rounded, y, q, 5, 4), atol=1e-6)


def test_a_training_sample_never_votes_for_itself(toy):
    x, y = toy
    bank = MemoryBank.build(x, y, 4, k=1)
    rows = np.arange(len(y))
    own = bank.vote(x, rows=rows)
    # with k = 1 and itself counted, every sample would vote for its own class alone (similarity 1)
    with_self = bank.vote(x)
    assert np.all(with_self.argmax(1) == y)
    rounded = bank.features.float().numpy()
    np.testing.assert_allclose(own, _brute_vote(rounded, y, x, 1, 4, own=rows), atol=1e-6)
    # a class-3 sample (2 in all) that lies by its twin: the twin's vote is the only one it gets, never its own
    assert not np.array_equal(own, with_self)


def test_an_exact_duplicate_elsewhere_still_counts(toy):
    x, y = toy
    x2, y2 = np.vstack([x, x[:1]]), np.append(y, y[0])  # row 36 duplicates row 0
    bank = MemoryBank.build(x2, y2, 4, k=1)
    v = bank.vote(x2[:1], rows=np.array([0]))
    assert v[0, y[0]] == pytest.approx(1.0)  # its twin (another row) is its nearest neighbour


def test_vote_is_class_balanced():
    x = np.array([[1.0, 0.0]] * 4 + [[0.9, 0.1]], dtype=np.float32)
    y = np.array([0, 0, 0, 0, 1])
    v = MemoryBank.build(x, y, 2, k=5).vote(np.array([[1.0, 0.0]], dtype=np.float32))
    # 4 neighbours of class 0 (n = 4) weigh 4 * 1/4 = 1, the one of class 1 (n = 1) weighs 1
    np.testing.assert_allclose(v, [[0.5, 0.5]], atol=1e-6)


def test_choose_weight_takes_the_first_best_and_zero_when_memory_hurts():
    logits = np.array([[2.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    lv = log_vote(np.array([[0.0, 1.0], [0.0, 1.0]]), 0.001)
    labels = np.array([0, 1])
    w, scores = choose_weight(logits, lv, labels, np.ones(2))
    assert w == 0.0 and scores[0] == 2.0
    w, _ = choose_weight(logits, lv, np.array([1, 1]), np.ones(2))
    assert w > 0.0  # memory turns the first row to its label


def test_choose_memory_keeps_no_memory_unless_a_weight_and_floor_beat_it():
    logits = np.array([[2.0, 0.0, 1.9], [0.0, 2.0, 1.9]], dtype=np.float32)
    labels = np.array([0, 1])
    vote = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # memory says class 2, wrong for both
    assert choose_memory(logits, vote, labels, np.ones(2))[:2] == (0.0, VOTE_FLOORS[0])
    # memory right on both rows: some weight turns the first row, the first floor that does it is kept
    w, floor, scores = choose_memory(logits, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([0, 1]),
                                     np.ones(2))
    assert w == 0.0 and floor == VOTE_FLOORS[0] and len(scores) == 3 * 8  # already right: nothing to add
    w, floor, _ = choose_memory(logits, np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), np.array([2, 1]),
                                np.ones(2))
    assert w > 0.0 and floor in VOTE_FLOORS
    # a soft floor lets a class no neighbour voted for win on its logits; a hard one vetoes it
    logits = np.array([[4.0, 0.0]], dtype=np.float32)
    vote = np.array([[0.0, 1.0]])
    assert (logits + log_vote(vote, 0.05)).argmax() == 0 and (logits + 2 * log_vote(vote, 0.001)).argmax() == 1


def test_memory_file_round_trips(tmp_path, toy):
    x, y = toy
    bank = MemoryBank.build(x, y, 4, k=3)
    bank.save(tmp_path / "m.safetensors")
    back = MemoryBank.load(tmp_path / "m.safetensors")
    q = x[:5]
    np.testing.assert_array_equal(back.vote(q), bank.vote(q))
