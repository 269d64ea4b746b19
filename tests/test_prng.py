"""``key=`` arguments: int seeds, raw keys and typed keys give the same draws."""

import jax
import numpy as np
import pytest

from cnnvis_jax.errors import InputError
from cnnvis_jax.prng import raw_key


def test_seed_raw_and_typed_keys_agree():
    expected = np.asarray(jax.random.PRNGKey(7))
    for key in (7, np.int64(7), jax.random.PRNGKey(7), jax.random.key(7)):
        assert np.array_equal(np.asarray(raw_key(key)), expected)


@pytest.mark.parametrize("bad", [1.5, "7", True, np.zeros(3, np.uint32), None])
def test_anything_else_is_refused_in_one_line(bad):
    with pytest.raises(InputError, match="key must be an int seed or a JAX PRNG key"):
        raw_key(bad)
