"""Robust aggregation per parameter group against hand-computed aggregates."""

from __future__ import annotations

import numpy as np
import pytest

from flexmoe_core.aggregation import ClientUpdate, aggregate
from flexmoe_core.robust_aggregation import robust_aggregate, screen_updates, trim_count

E = 2
GLOBAL = {
    "extractor.w": np.zeros(2, np.float32),
    "experts.0.w": np.zeros(2, np.float32),
    "experts.1.w": np.zeros(2, np.float32),
}


def update(extractor, experts, examples=10):
    """experts: {e: value}; usage = examples on each held expert."""
    state = {"extractor.w": np.asarray(extractor, np.float32)}
    usage = np.zeros(E)
    for e, value in experts.items():
        state[f"experts.{e}.w"] = np.asarray(value, np.float32)
        usage[e] = examples
    return ClientUpdate(state=state, num_examples=examples, usage=usage)


def test_none_is_exactly_the_plain_weighted_average():
    updates = [update([1, 2], {0: [3, 3]}, 10), update([3, 4], {0: [5, 5], 1: [1, 1]}, 30)]
    robust = robust_aggregate(GLOBAL, updates, E, "none")
    plain = aggregate(GLOBAL, updates, E)
    for key in GLOBAL:
        np.testing.assert_array_equal(robust[key], plain[key])
    np.testing.assert_allclose(robust["extractor.w"], [2.5, 3.5])  # (1*10 + 3*30) / 40, (2*10 + 4*30) / 40


def test_median_and_trimmed_mean_resist_one_scaled_holder_among_five():
    values = [[1, 10], [2, 20], [3, 30], [4, 40], [500, -900]]
    updates = [update(v, {0: v}) for v in values]
    median = robust_aggregate(GLOBAL, updates, E, "median")
    np.testing.assert_allclose(median["extractor.w"], [3, 20])  # medians of (1,2,3,4,500), (10,20,30,40,-900)
    np.testing.assert_allclose(median["experts.0.w"], [3, 20])
    trimmed = robust_aggregate(GLOBAL, updates, E, "trimmed-mean", trim_fraction=0.2)  # drop 1 per end
    np.testing.assert_allclose(trimmed["extractor.w"], [(2 + 3 + 4) / 3, (10 + 20 + 30) / 3])
    np.testing.assert_array_equal(trimmed["experts.1.w"], GLOBAL["experts.1.w"])  # nobody held it
    plain = robust_aggregate(GLOBAL, updates, E, "none")
    assert plain["extractor.w"][0] == pytest.approx(102.0)  # the attacker drags the mean


def test_trimming_with_too_few_holders_falls_back_as_documented():
    assert trim_count(3, 0.2) == 0 and trim_count(5, 0.2) == 1 and trim_count(10, 0.3) == 3
    three = [update([0, 0], {0: v}, ex) for v, ex in (([1, 1], 10), ([2, 2], 10), ([90, 90], 20))]
    out = robust_aggregate(GLOBAL, three, E, "trimmed-mean", trim_fraction=0.2)
    np.testing.assert_allclose(out["experts.0.w"], [2, 2])  # 3 holders, nothing to trim: the median
    two = [update([0, 0], {1: v}, ex) for v, ex in (([1, 1], 10), ([4, 4], 30))]
    out = robust_aggregate(GLOBAL, two, E, "trimmed-mean", trim_fraction=0.2)
    np.testing.assert_allclose(out["experts.1.w"], [3.25, 3.25])  # 2 holders: the usage-weighted mean


def test_norm_clip_uses_the_median_norm_pooled_over_all_experts():
    # Expert 0 has two holders, one honest (norm 1) and one attacker (norm 100). A median over
    # expert 0's own holders is 50.5 and would clip the attacker only to 101: no defence. The pool
    # of all four expert updates has norms (1, 100, 1, 1): median 1, bound 2 * 1 = 2.
    updates = [
        update([0, 0], {0: [1, 0]}, 10),
        update([0, 0], {0: [100, 0]}, 10),
        update([0, 0], {1: [0, 1]}, 10),
        update([0, 0], {1: [0, 1]}, 10),
    ]
    out = robust_aggregate(GLOBAL, updates, E, "norm-clip", clip_factor=2.0)
    np.testing.assert_allclose(out["experts.0.w"], [(1 + 2) / 2, 0])  # the attacker clipped to norm 2
    np.testing.assert_allclose(out["experts.1.w"], [0, 1])  # honest updates untouched
    plain = robust_aggregate(GLOBAL, updates, E, "none")
    np.testing.assert_allclose(plain["experts.0.w"], [50.5, 0])


def test_norm_clip_on_the_extractor_pool():
    # Extractor updates of norms 5, 5, 5, 50 (3-4-5 triangles): median 5, bound 5 at factor 1.
    updates = [update([3, 4], {}, 10), update([3, 4], {}, 10), update([4, 3], {}, 10), update([30, 40], {}, 10)]
    out = robust_aggregate(GLOBAL, updates, E, "norm-clip", clip_factor=1.0)
    np.testing.assert_allclose(out["extractor.w"], [(3 + 3 + 4 + 3) / 4, (4 + 4 + 3 + 4) / 4], rtol=1e-6)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="robust aggregation must be one of"):
        robust_aggregate(GLOBAL, [], E, "krum")
    with pytest.raises(ValueError, match="trim_fraction"):
        robust_aggregate(GLOBAL, [], E, "trimmed-mean", trim_fraction=0.5)


def test_norm_screen_drops_the_whole_client_whose_update_is_far_longer():
    # Extractor norms 5, 5, 5, 50 (median 5, bound 3 x 5 = 15); expert norms 1, 1, 1, 50 (bound 3).
    # The boosted client is flagged on both groups and left out whole; the rest are untouched.
    updates = [
        update([3, 4], {0: [1, 0]}, 10),
        update([4, 3], {0: [0, 1]}, 10),
        update([3, 4], {1: [1, 0]}, 10),
        update([-30, -40], {1: [-30, -40]}, 10),
    ]
    screened = screen_updates(GLOBAL, updates, 3.0, ["a", "b", "c", "boosted"])
    assert screened.kept == [0, 1, 2] and screened.dropped == 1
    assert [(f.client, f.group) for f in screened.flags] == [("boosted", "expert-1"), ("boosted", "extractor")]
    assert [f.norm for f in screened.flags] == pytest.approx([50.0, 50.0])
    assert [f.limit for f in screened.flags] == pytest.approx([3.0, 15.0])
    kept = robust_aggregate(GLOBAL, [updates[i] for i in screened.kept], E, "none")
    np.testing.assert_allclose(kept["extractor.w"], [10 / 3, 11 / 3], rtol=1e-6)
    np.testing.assert_allclose(kept["experts.1.w"], [1, 0])  # its one honest holder, not (1 - 30) / 2


def test_norm_screen_catches_a_client_boosting_only_an_expert():
    # Honest-sized extractor, one expert blown up: the expert pool (norms 1, 1, 1, 40) flags it.
    updates = [update([1, 0], {0: [1, 0]}), update([0, 1], {0: [0, 1]}), update([1, 0], {1: [1, 0]})]
    updates.append(update([0, 1], {1: [0, -40]}))
    screened = screen_updates(GLOBAL, updates, 3.0)
    assert screened.kept == [0, 1, 2]
    assert [(f.client, f.group) for f in screened.flags] == [("update-3", "expert-1")]


def test_norm_screen_passes_an_update_boosted_by_less_than_its_factor():
    # What the screen does not do: a x2.5 update (norm 12.5 <= 3 x 5) is left to the rule after it.
    updates = [update([3, 4], {}), update([4, 3], {}), update([3, 4], {}), update([-7.5, -10], {})]
    assert screen_updates(GLOBAL, updates, 3.0).kept == [0, 1, 2, 3]
    assert screen_updates(GLOBAL, updates, 0.0).kept == [0, 1, 2, 3]  # off
    with pytest.raises(ValueError, match="norm-screen must be 0"):
        screen_updates(GLOBAL, updates, 1.0)
