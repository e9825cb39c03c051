"""common/selection.py's bookkeeping: the ``keep`` best candidates and their confirmation on fresh episodes.

The closed-loop measure is replaced by a table (weights -> success rate per seed), so each test states
exactly which weights should win; the measure itself is tested through the stages (test_ppo.py,
test_finetune_stage.py)."""

import torch

from common.selection import BestCheckpoint

SELECT_SEED, CONFIRM_SEED = 5, 99


class Tag(torch.nn.Module):
    """A policy whose one weight names the iteration it was measured at."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def selector(keep: int, table: dict[int, tuple[float, float]]) -> tuple[BestCheckpoint, Tag]:
    """``table[iteration] = (rate on the selection's episodes, rate on the confirmation's)``."""
    s = BestCheckpoint(lambda: None, every=1, episodes=100, seed=0, seed_fn=lambda seed: SELECT_SEED, keep=keep)
    s._success_rate = lambda policy, episodes, seed: table[int(policy.w.item())][seed == CONFIRM_SEED]
    return s, Tag()


def run(s: BestCheckpoint, policy: Tag, iterations) -> None:
    for it in iterations:
        with torch.no_grad():
            policy.w.fill_(it)
        s.consider(it, policy)


def test_keeps_the_best_candidates_best_first_ties_to_the_earlier():
    table = {0: (0.5, 0), 1: (0.9, 0), 2: (0.7, 0), 3: (0.9, 0), 4: (0.95, 0), 5: (0.6, 0)}
    s, policy = selector(3, table)
    run(s, policy, range(6))
    assert [c["iteration"] for c in s.candidates] == [4, 1, 3]
    assert [c["model"]["w"].item() for c in s.candidates] == [4, 1, 3]  # copies, not the live weights
    assert s.best["iteration"] == 4
    one, _ = selector(1, table)
    run(one, policy, range(6))
    assert [c["iteration"] for c in one.candidates] == [4] and one.best["iteration"] == 4


def test_confirmation_keeps_the_most_successes_over_both_sets_and_restores_the_policy():
    # iteration 4 was lucky on the selection's episodes: 2 and 1 hold up on fresh ones
    table = {0: (0.5, 0.5), 1: (0.93, 0.96), 2: (0.94, 0.97), 3: (0.6, 0.6), 4: (0.98, 0.88)}
    s, policy = selector(3, table)
    run(s, policy, range(5))
    assert s.best["iteration"] == 4
    with torch.no_grad():
        policy.w.fill_(42.0)  # the live (last) weights
    table[42] = (0.0, 0.0)
    rows = s.confirm(policy, 100, CONFIRM_SEED)
    assert [r["iteration"] for r in rows] == [4, 2, 1]
    assert [r["confirm_success_rate"] for r in rows] == [0.88, 0.97, 0.96]
    assert [round(r["success_rate_both"], 3) for r in rows] == [0.93, 0.955, 0.945]
    assert s.best["iteration"] == 2 and s.best["model"]["w"].item() == 2
    assert policy.w.item() == 42.0  # its own weights back
    assert s.confirmation == rows


def test_confirmation_ties_go_to_the_better_selection_rank_and_one_candidate_is_not_replayed():
    table = {0: (0.9, 0.8), 1: (0.8, 0.9)}  # equal totals
    s, policy = selector(2, table)
    run(s, policy, range(2))
    s.confirm(policy, 100, CONFIRM_SEED)
    assert s.best["iteration"] == 0
    single, policy = selector(1, table)
    run(single, policy, range(2))
    assert single.confirm(policy, 100, CONFIRM_SEED) == [] and single.best["iteration"] == 0


def test_candidates_survive_a_checkpoint_and_old_checkpoints_load():
    table = {i: (r, r) for i, r in enumerate([0.3, 0.8, 0.6, 0.9])}
    s, policy = selector(3, table)
    run(s, policy, range(4))
    state = s.state_dict()
    t, _ = selector(3, table)
    t.load_state_dict(state)
    assert [c["iteration"] for c in t.candidates] == [3, 1, 2] and t.history == s.history
    old, _ = selector(3, table)
    old.load_state_dict({"best": state["best"], "history": state["history"]})  # before ``keep``
    assert [c["iteration"] for c in old.candidates] == [3]
