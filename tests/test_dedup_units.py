"""Small in-process tests of the dedup package's building blocks, with hand-computed numbers
(written against the mutants that the dedup tests let survive; see docs/testing.md)."""
import numpy as np
import pyarrow as pa

from data_pipeline.dedup.order import range_key


def _meta(quality, n_chars):
    return pa.table({"quality_score": pa.array(quality, pa.float32()), "n_chars": pa.array(n_chars, pa.int64())})


def test_range_key_orders_quality_desc_nulls_last_then_length_desc():
    meta = _meta([0.5, None, 0.9, 0.5, -0.0, 0.0, -1.0, 0.9], [10, 10, 10, 20, 5, 5, 3, 2 ** 40])
    keys = range_key(meta)
    assert keys.dtype == np.uint64
    # 0.9 (longest first; 2**40 chars caps at 2**32 - 1), 0.5 (20 then 10), 0.0 = -0.0, -1.0, null
    assert np.argsort(keys, kind="stable").tolist() == [7, 2, 3, 0, 4, 5, 6, 1]
    assert keys[4] == keys[5]
    assert int(keys[7]) & 0xFFFFFFFF == 0 and int(keys[2]) & 0xFFFFFFFF == 0xFFFFFFFF - 10
    assert int(keys[1]) >> 32 == 0xFFFFFFFF
