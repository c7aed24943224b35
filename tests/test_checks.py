"""The shared argument checks of the library."""

from __future__ import annotations

import numpy as np
import pytest

from flexmoe_core import checks


def test_integer_accepts_numpy_integers_and_refuses_bools_floats_and_small_values():
    assert checks.integer("k", np.int64(3), minimum=1) == 3
    for bad in (True, 2.0, "2"):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            checks.integer("k", bad, minimum=1)
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, got 0"):
        checks.integer("k", 0, minimum=1)
    assert checks.integer("n", -5) == -5


def test_integers_and_choice():
    assert checks.integers("ids", (np.int32(1), 2)) == [1, 2]
    with pytest.raises(ValueError, match=r"ids must be integers, got 1.5 in \[1, 1.5\]"):
        checks.integers("ids", [1, 1.5])
    assert checks.choice("mode", "loss", ("accuracy", "loss")) == "loss"
    with pytest.raises(ValueError, match=r"mode must be one of \('accuracy', 'loss'\), got 'acc'"):
        checks.choice("mode", "acc", ("accuracy", "loss"))
