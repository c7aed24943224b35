"""Tests of partial-model aggregation (flexmoe_core.aggregation)."""

from __future__ import annotations

import numpy as np
import pytest

from flexmoe_core.aggregation import (
    ClientUpdate,
    aggregate,
    payload_bytes,
    select_experts,
)
from flexmoe_core.protocol import expert_of, held_experts

f32 = np.float32


def global_state() -> dict[str, np.ndarray]:
    return {
        "extractor.w": np.array([[0.0, 0.0]], dtype=f32),
        "extractor.steps": np.array(0, dtype=np.int64),  # covered by nobody below
        "experts.0.w": np.array([0.0, 0.0], dtype=f32),
        "experts.1.w": np.array([0.0], dtype=f32),
        "experts.2.w": np.array([5.0, 7.0], dtype=f32),
    }


def client_a(usage=(3.0, 2.0, 0.0)) -> ClientUpdate:
    return ClientUpdate(
        state={
            "extractor.w": np.array([[1.0, 2.0]], dtype=f32),
            "experts.0.w": np.array([1.0, 1.0], dtype=f32),
            "experts.1.w": np.array([4.0], dtype=f32),
            "gate.w": np.array([9.0], dtype=f32),
        },
        num_examples=10,
        usage=np.array(usage),
    )


def client_b(usage=(1.0, 0.0, 0.0)) -> ClientUpdate:
    return ClientUpdate(
        state={
            "extractor.w": np.array([[5.0, 6.0]], dtype=f32),
            "experts.0.w": np.array([5.0, 9.0], dtype=f32),
            "gate.w": np.array([100.0], dtype=f32),
        },
        num_examples=30,
        usage=np.array(usage),
    )


def test_expert_of_parses_expert_keys_only():
    assert expert_of("experts.3.0.weight") == 3
    assert expert_of("experts.12.fc.bias") == 12
    assert expert_of("extractor.conv.weight") is None
    assert expert_of("gate.weight") is None
    assert expert_of("experts.x.weight") is None
    assert expert_of("my.experts.1.weight") is None


def test_aggregate_matches_hand_computed_averages():
    result = aggregate(global_state(), [client_a(), client_b()], num_experts=3)
    # extractor: (10*[1,2] + 30*[5,6]) / 40 = [4, 5]
    assert np.array_equal(result["extractor.w"], np.array([[4.0, 5.0]], dtype=f32))
    # expert 0 held by both, usage 3 and 1: (3*[1,1] + 1*[5,9]) / 4 = [2, 3]
    assert np.array_equal(result["experts.0.w"], np.array([2.0, 3.0], dtype=f32))
    # expert 1 held by client A only: its weights
    assert np.array_equal(result["experts.1.w"], np.array([4.0], dtype=f32))
    # expert 2 held by nobody: keeps the global weights
    assert np.array_equal(result["experts.2.w"], np.array([5.0, 7.0], dtype=f32))
    # a global key no update covers keeps its value
    assert result["extractor.steps"] == 0
    # gates are personal: never in the output
    assert sorted(result) == sorted(global_state())
    # output dtype = global dtype
    assert all(result[k].dtype == v.dtype for k, v in global_state().items())


def test_expert_with_all_zero_usage_falls_back_to_example_counts():
    updates = [client_a(usage=(0.0, 2.0, 0.0)), client_b(usage=(0.0, 0.0, 0.0))]
    result = aggregate(global_state(), updates, num_experts=3)
    # (10*[1,1] + 30*[5,9]) / 40 = [4, 7]
    assert np.array_equal(result["experts.0.w"], np.array([4.0, 7.0], dtype=f32))


def test_zero_usage_holder_does_not_count_when_another_holder_used_the_expert():
    updates = [client_a(usage=(0.0, 2.0, 0.0)), client_b(usage=(2.0, 0.0, 0.0))]
    result = aggregate(global_state(), updates, num_experts=3)
    assert np.array_equal(result["experts.0.w"], np.array([5.0, 9.0], dtype=f32))


def test_extractor_weights_ignore_usage_and_experts_ignore_example_counts():
    # Swapping usage must change only the experts; swapping example counts only the extractor.
    a, b = client_a(usage=(1.0, 2.0, 0.0)), client_b(usage=(3.0, 0.0, 0.0))
    result = aggregate(global_state(), [a, b], num_experts=3)
    assert np.array_equal(result["extractor.w"], np.array([[4.0, 5.0]], dtype=f32))
    # (1*[1,1] + 3*[5,9]) / 4 = [4, 7]
    assert np.array_equal(result["experts.0.w"], np.array([4.0, 7.0], dtype=f32))


def test_client_with_zero_examples_and_zero_usage_keeps_global_weights():
    lonely = ClientUpdate(
        state={"extractor.w": np.array([[9.0, 9.0]], dtype=f32), "experts.2.w": np.ones(2, f32)},
        num_examples=0,
        usage=np.zeros(3),
    )
    result = aggregate(global_state(), [lonely], num_experts=3)
    assert np.array_equal(result["extractor.w"], global_state()["extractor.w"])
    assert np.array_equal(result["experts.2.w"], global_state()["experts.2.w"])


def test_arithmetic_is_float64_before_the_cast():
    # float32 cannot hold 2**24 + 1: summing in float32 loses both +1s and gives
    # 2**24 / 3 = 5592405.5, while float64 gives (2**24 + 2) / 3 = 5592406 exactly.
    big = np.float32(2.0**24)
    g = {"extractor.w": np.zeros(1, dtype=f32)}
    ups = [ClientUpdate({"extractor.w": np.array([value], dtype=f32)}, 1, np.zeros(1)) for value in (big, 1.0, 1.0)]
    result = aggregate(g, ups, num_experts=1)
    assert result["extractor.w"].dtype == f32
    assert result["extractor.w"][0] == np.float32(5592406.0)


def test_integer_buffers_are_rounded_not_truncated():
    g = {"extractor.count": np.array([0], dtype=np.int64)}
    ups = [
        ClientUpdate({"extractor.count": np.array([1])}, 10, np.zeros(1)),
        ClientUpdate({"extractor.count": np.array([2])}, 30, np.zeros(1)),
    ]
    result = aggregate(g, ups, num_experts=1)  # (10 + 60) / 40 = 1.75 -> 2
    assert result["extractor.count"].dtype == np.int64
    assert result["extractor.count"][0] == 2


def test_empty_updates_return_an_unchanged_copy():
    g = global_state()
    result = aggregate(g, [], num_experts=3)
    assert sorted(result) == sorted(g)
    for key in g:
        assert np.array_equal(result[key], g[key])
        assert result[key] is not g[key]
    result["experts.2.w"][0] = -1.0
    assert g["experts.2.w"][0] == 5.0


def test_aggregate_does_not_modify_its_inputs():
    g, a, b = global_state(), client_a(), client_b()
    aggregate(g, [a, b], num_experts=3)
    assert np.array_equal(g["experts.0.w"], [0.0, 0.0])
    assert np.array_equal(a.state["experts.0.w"], [1.0, 1.0])


def _update(state=None, num_examples=1, usage=(0.0, 0.0, 0.0)) -> ClientUpdate:
    return ClientUpdate(state if state is not None else {}, num_examples, np.array(usage))


@pytest.mark.parametrize(
    "make_update, message",
    [
        (lambda: _update({"experts.7.w": np.zeros(1, f32)}), "experts.7.w"),  # absent globally
        (lambda: _update({"extractor.v": np.zeros(1, f32)}), "extractor.v"),
        (lambda: _update({"experts.0.w": np.zeros(3, f32)}), "shape"),
        (lambda: _update({"extractor.w": np.zeros(2, f32)}), "shape"),
        (lambda: _update(num_examples=-1), "num_examples"),
        (lambda: _update(num_examples=2.5), "num_examples"),
        (lambda: _update(usage=(1.0, 1.0)), "usage"),  # wrong length
        (lambda: _update(usage=(1.0, -1.0, 0.0)), "usage"),
        (lambda: _update(usage=(1.0, float("nan"), 0.0)), "usage"),
    ],
)
def test_aggregate_rejects_bad_updates(make_update, message):
    with pytest.raises(ValueError, match=message):
        aggregate(global_state(), [client_a(), make_update()], num_experts=3)


def test_aggregate_rejects_expert_beyond_num_experts_and_unknown_prefix():
    g = {**global_state(), "experts.5.w": np.zeros(1, f32), "head.w": np.zeros(1, f32)}
    with pytest.raises(ValueError, match="num_experts"):
        aggregate(g, [_update({"experts.5.w": np.ones(1, f32)})], num_experts=3)
    with pytest.raises(ValueError, match="head.w"):
        aggregate(g, [_update({"head.w": np.ones(1, f32)})], num_experts=3)
    with pytest.raises(ValueError, match="num_experts"):
        aggregate(g, [], num_experts=0)


def test_select_experts_builds_a_download_of_extractor_and_held_experts():
    g = {**global_state(), "experts.10.w": np.zeros(1, f32), "gate.w": np.zeros(1, f32)}
    download = select_experts(g, [1, 2])
    assert sorted(download) == ["experts.1.w", "experts.2.w", "extractor.steps", "extractor.w"]
    assert np.array_equal(download["experts.2.w"], [5.0, 7.0])
    download["experts.2.w"][0] = 0.0  # a copy: the global state is untouched
    assert g["experts.2.w"][0] == 5.0
    assert sorted(select_experts(g, [10])) == ["experts.10.w", "extractor.steps", "extractor.w"]
    with pytest.raises(ValueError, match="repeat"):
        select_experts(g, [1, 1])
    with pytest.raises(ValueError, match=r"\[4\]"):
        select_experts(g, [0, 4])


def test_payload_bytes_sums_array_sizes():
    g = global_state()
    # float32: 2 + 2 + 1 + 2 = 7 values * 4 bytes ; int64 scalar: 8 bytes
    assert payload_bytes(g) == 7 * 4 + 8
    assert payload_bytes(select_experts(g, [0])) == (2 + 2) * 4 + 8
    assert payload_bytes({}) == 0


def test_held_experts_parses_expert_ids_from_state_keys():
    keys = ["extractor.w", "experts.3.fc.weight", "experts.3.fc.bias", "experts.10.w", "gate.weight", "my.experts.2.w"]
    assert held_experts(keys) == [3, 10]
    assert held_experts([]) == []
