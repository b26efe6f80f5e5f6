"""The record encoding: keys in index order, page-filling split into value + tail, checksums."""
from __future__ import annotations

import os

import pytest

from imagenet_pack.errors import CorruptRecordError
from imagenet_pack.format import TAIL_MAX, Record, decode_key, decode_record, encode_key, encode_record


def test_keys_sort_in_index_order():
    indices = [0, 1, 9, 10, 255, 256, 100000, 2**40]
    assert sorted(encode_key(i) for i in indices) == [encode_key(i) for i in indices]
    assert [decode_key(encode_key(i)) for i in indices] == indices


@pytest.mark.parametrize("size", [100, 3000, 4096 * 5, 4096 * 5 + 1500, 4096 * 5 + 3000, 110_000])
def test_value_fills_whole_pages_and_round_trips(size):
    image = os.urandom(size)
    record = Record(image, 7, 375, 500)
    value, tail = encode_record(record, 4096)
    if tail is not None:
        assert (len(value) + 16) % 4096 == 0  # exactly fills its overflow pages
        assert 0 < len(tail) <= TAIL_MAX
    assert decode_record(value, "r", lambda: tail) == record
    whole, none = encode_record(record)
    assert none is None and decode_record(whole, "r") == record


def test_damaged_or_missing_tail_is_detected():
    record = Record(os.urandom(4096 * 3 + 1000), 1, 10, 10)
    value, tail = encode_record(record, 4096)
    assert tail is not None
    bad = bytearray(tail)
    bad[5] ^= 1
    with pytest.raises(CorruptRecordError, match="checksum mismatch"):
        decode_record(value, "shard record 3", lambda: bytes(bad))
    with pytest.raises(CorruptRecordError, match=r"shard record 3: the last \d+ image bytes"):
        decode_record(value, "shard record 3", lambda: None)


def test_garbage_value_is_a_corrupt_record():
    with pytest.raises(CorruptRecordError, match="k9: not a valid record"):
        decode_record(b"\x93\x01\x02", "k9")
