"""centered-clip on hand-made updates: the bound on one holder's pull, the direction check, the state."""

from __future__ import annotations

import numpy as np
import pytest

from flexmoe_core.aggregation import ClientUpdate
from flexmoe_core.centered_clip import centered_clip
from flexmoe_core.config import Settings, SettingsError
from flexmoe_core.robust_aggregation import robust_aggregate

E = 2
GLOBAL = {
    "extractor.w": np.zeros(3, np.float32),
    "experts.0.w": np.zeros(3, np.float32),
    "experts.1.w": np.zeros(3, np.float32),
}
HONEST = np.array([1.0, 2.0, 2.0])  # ||HONEST|| = 3


def update(value, experts=(0,), examples=10):
    value = np.asarray(value, np.float32)
    state = {"extractor.w": value, **{f"experts.{e}.w": value for e in experts}}
    usage = np.zeros(E)
    usage[list(experts)] = examples
    return ClientUpdate(state=state, num_examples=examples, usage=usage)


def honest_and_flipped(scale=10.0):
    """Two honest holders and one that sends the first's update flipped and scaled."""
    return [update(HONEST), update(HONEST * 1.1), update(-scale * HONEST)]


@pytest.mark.parametrize("scale", [10.0, 1e3, 1e6])
def test_one_flipped_holder_moves_the_group_by_at_most_its_share_of_tau(scale):
    tau = 1.0
    out = centered_clip(GLOBAL, honest_and_flipped(scale), E, tau=tau, direction_threshold=-1.0)
    honest = centered_clip(GLOBAL, honest_and_flipped(scale)[:2], E, tau=tau, direction_threshold=-1.0)
    for key in ("extractor.w", "experts.0.w"):
        v = out.state[key].astype(np.float64)
        # v = (clip(u1) + clip(u2) + clip(u3)) / 3: without the attacker it would be 2/3 of the honest mean.
        pull = v - 2.0 / 3.0 * honest.state[key]
        assert np.linalg.norm(pull) <= tau / 3 + 1e-6  # one holder of three: at most tau / 3
        assert np.linalg.norm(v) <= tau + 1e-6  # and the whole step is at most tau from the reference
    np.testing.assert_array_equal(out.state["experts.1.w"], GLOBAL["experts.1.w"])  # nobody held it
    plain = robust_aggregate(GLOBAL, honest_and_flipped(scale), E, "none")
    assert np.linalg.norm(plain["experts.0.w"]) > scale / 4  # without a defence the attacker wins


def test_the_bound_holds_whatever_the_number_of_holders():
    tau = 0.5
    for holders in (2, 5, 50):
        updates = [update(HONEST) for _ in range(holders - 1)] + [update(-1e4 * HONEST)]
        out = centered_clip(GLOBAL, updates, E, tau=tau, direction_threshold=-1.0)
        clean = centered_clip(GLOBAL, updates[:-1], E, tau=tau, direction_threshold=-1.0)
        share = (holders - 1) / holders
        pull = out.state["experts.0.w"] - share * clean.state["experts.0.w"]
        assert np.linalg.norm(pull) <= tau / holders + 1e-6


def test_tau_from_the_pooled_median_distance_when_not_set():
    out = centered_clip(GLOBAL, honest_and_flipped(), E, clip_factor=2.0, direction_threshold=-1.0)
    norms = sorted(np.linalg.norm(v) for v in (HONEST, 1.1 * HONEST, 10 * HONEST))
    assert out.taus["extractor"] == pytest.approx(2.0 * norms[1], rel=1e-6)  # median distance to r = 0
    assert out.taus["expert-0"] == pytest.approx(2.0 * norms[1], rel=1e-6)


def test_the_reference_centres_the_next_round_and_the_direction_check_drops_the_flipped_update():
    first = centered_clip(GLOBAL, [update(HONEST), update(HONEST)], E, tau=10.0, direction_reference="history")
    np.testing.assert_allclose(first.references["experts.0.w"], HONEST)  # last accepted update
    assert first.flags == []  # no reference yet: nothing to compare with
    labels = ["honest-a", "honest-b", "attacker"]
    second = centered_clip(
        GLOBAL,
        honest_and_flipped(),
        E,
        first.references,
        tau=10.0,
        direction_threshold=0.0,
        direction_reference="history",
        labels=labels,
    )
    dropped = {(f.client, f.group) for f in second.flags}
    assert dropped == {("attacker", "extractor"), ("attacker", "expert-0")}
    assert all(f.cosine == pytest.approx(-1.0) and f.factor == 0.0 for f in second.flags)
    # Only the honest updates count: r + mean(u_i - r) over the two honest ones.
    np.testing.assert_allclose(second.state["experts.0.w"], (HONEST + 1.1 * HONEST) / 2, rtol=1e-6)
    # down-weight instead of drop: weight x (1 + cos) / (1 + threshold) = 0 at cos = -1, partial above
    half = [update(HONEST), update(np.array([-2.0, 1.0, 0.0]))]  # cosine 0 to HONEST
    soft = centered_clip(
        GLOBAL,
        half,
        E,
        first.references,
        tau=10.0,
        direction_threshold=0.5,
        direction_action="down-weight",
        direction_reference="history",
    )
    assert [f.factor for f in soft.flags] == pytest.approx([1 / 1.5, 1 / 1.5])  # extractor and expert 0


def test_the_round_direction_drops_a_flipped_update_from_the_first_round_on():
    updates = [update(HONEST), update(HONEST * 1.1), update(HONEST * 0.9), update(-10 * HONEST)]
    labels = ["a", "b", "c", "attacker"]
    out = centered_clip(GLOBAL, updates, E, tau=1.0, direction_threshold=0.0, labels=labels)  # no history yet
    assert {(f.client, f.group) for f in out.flags} == {("attacker", "extractor"), ("attacker", "expert-0")}
    np.testing.assert_allclose(out.state["experts.0.w"], HONEST / 3, rtol=1e-6)  # mean of the clipped honest


def test_momentum_and_a_fully_dropped_group_keeps_weights_and_reference():
    refs = {"experts.0.w": HONEST.copy()}
    alone = [update(-HONEST, experts=(0,))]
    out = centered_clip(GLOBAL, alone, E, refs, tau=10.0, direction_threshold=0.0, direction_reference="history")
    np.testing.assert_array_equal(out.state["experts.0.w"], GLOBAL["experts.0.w"])
    np.testing.assert_array_equal(out.references["experts.0.w"], HONEST)
    np.testing.assert_array_equal(refs["experts.0.w"], HONEST)  # the input is never modified
    moved = centered_clip(GLOBAL, [update(3 * HONEST)], E, refs, tau=100.0, momentum=0.75)
    np.testing.assert_allclose(moved.references["experts.0.w"], 0.75 * HONEST + 0.25 * 3 * HONEST)


def test_settings_name_the_bad_centered_clip_values():
    with pytest.raises(SettingsError) as err:
        Settings.from_run_config(
            {"clip-tau": -1.0, "clip-momentum": 1.0, "direction-threshold": 2.0, "direction-action": "ignore"}
        )
    text = str(err.value)
    for key in ("clip-tau", "clip-momentum", "direction-threshold", "direction-action"):
        assert key in text
    assert Settings.from_run_config({"robust-aggregation": "centered-clip"}).robust_aggregation == "centered-clip"


@pytest.mark.usefixtures("flower_identity")
def test_the_references_are_checkpointed_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    from flexmoe_core.results import load_checkpoint
    from server_app.app import FederatedRun
    from tests.in_process import federation, run_config

    def run(name, rounds, resume=False, first_node_id=1000):
        config = run_config(
            num_server_rounds=rounds,
            results_dir=str(tmp_path / name),
            resume=resume,
            client_state_dir=str(tmp_path / name / "client-state"),
            robust_aggregation="centered-clip",
            clip_momentum=0.5,
            attack="sign-flip",
            attack_clients="partition-0",
        )
        FederatedRun(Settings.from_run_config(config), federation(config, 3, first_node_id)).execute()
        return tmp_path / name

    full = run("full", 3)
    part = run("resumed", 2)
    run("resumed", 3, resume=True, first_node_id=5000)
    arrays_full, _ = load_checkpoint(full / "checkpoint.npz")
    arrays_resumed, _ = load_checkpoint(part / "checkpoint.npz")
    assert any(k.startswith("reference/experts.") for k in arrays_full)  # the history is in the checkpoint
    assert arrays_full.keys() == arrays_resumed.keys()
    for key, value in arrays_full.items():
        np.testing.assert_array_equal(arrays_resumed[key], value, err_msg=key)


def test_a_client_flagged_on_the_extractor_is_dropped_from_the_experts_it_holds():
    # Expert 1 has two holders, an honest one and the attacker: its own consensus cannot tell them
    # apart, but the attacker's flipped extractor update (against 3 honest ones) gives it away.
    updates = [
        update(HONEST, experts=(0,)),
        update(HONEST, experts=(0,)),
        update(HONEST, experts=(1,)),
        update(-10 * HONEST, experts=(1,)),
    ]
    labels = ["a", "b", "c", "attacker"]
    out = centered_clip(GLOBAL, updates, E, tau=1.0, direction_threshold=0.0, labels=labels)
    assert {(f.client, f.group) for f in out.flags} == {("attacker", "extractor"), ("attacker", "expert-1")}
    np.testing.assert_allclose(out.state["experts.1.w"], HONEST / 3, rtol=1e-6)  # only the honest holder
