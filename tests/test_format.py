"""The record encoding and the metadata: keys in index order, page-filling values, checksums over every field,
and every malformed value read back a FormatError."""
from __future__ import annotations

import os

import msgpack
import pytest

from imagenet_pack.contract.format import (
    TAIL_MAX,
    Record,
    ShardMeta,
    decode_key,
    decode_paths,
    decode_record,
    encode_key,
    encode_paths,
    encode_record,
)
from imagenet_pack.errors import CorruptRecordError, FormatError
from imagenet_pack.write.state import Problem, Progress, Row, decode_rows, encode_rows


def test_keys_sort_in_index_order():
    indices = [0, 1, 9, 10, 255, 256, 100000, 2**40]
    assert sorted(encode_key(i) for i in indices) == [encode_key(i) for i in indices]
    assert [decode_key(encode_key(i)) for i in indices] == indices
    with pytest.raises(CorruptRecordError, match="key is 3 bytes"):
        decode_key(b"abc")


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


def test_every_field_of_a_record_is_covered_by_its_checksum():
    value, _ = encode_record(Record(os.urandom(500), 3, 128, 96))
    fields = msgpack.unpackb(value)
    for name, changed in (("target", 4), ("height", 40), ("width", 250), ("height", 0)):
        bad = msgpack.packb({**fields, name: changed}, use_bin_type=True)
        with pytest.raises(CorruptRecordError, match="r7: (checksum mismatch|not a valid record)"):
            decode_record(bad, "r7")
    for name, odd in (("target", float("inf")), ("target", 3.0), ("height", True), ("width", "96"), ("crc32", -1)):
        with pytest.raises(CorruptRecordError, match="not a valid record"):
            decode_record(msgpack.packb({**fields, name: odd}, use_bin_type=True), "r7")
    with pytest.raises(CorruptRecordError, match="not a valid record"):
        decode_record(msgpack.packb({**fields, "extra": 1}, use_bin_type=True), "r7")


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


def _meta(**kw) -> ShardMeta:
    return ShardMeta(**{"split": "train", "shard": 0, "num_shards": 1, "count": 2, "items": 3,
                        "wnids": ("n01440764",), "classes": (("tench",),), **kw})


def test_metadata_round_trips_paths_that_are_not_utf8_and_refuses_malformed_fields():
    meta = _meta(fixed=(("train/n0/caf\udce9.JPEG", "PNG data re-encoded"),),
                 skipped=(("train/n0/empty\udcfd.JPEG", "empty file"),), short_side=256, quality=90)
    assert ShardMeta.from_msgpack(meta.to_msgpack(), "m") == meta
    fields = msgpack.unpackb(meta.to_msgpack(), raw=False)
    for name, odd in (("count", float("inf")), ("count", -1), ("shard", 5), ("items", 1), ("wnids", [7]),
                      ("num_shards", "2"), ("fixed", [["a", "b"]]), ("encoding", None)):
        with pytest.raises(FormatError, match="m: metadata field missing or malformed"):
            ShardMeta.from_msgpack(msgpack.packb({**fields, name: odd}, use_bin_type=True), "m")
    with pytest.raises(FormatError, match="format version 2 is not supported"):
        ShardMeta.from_msgpack(msgpack.packb({**fields, "version": 2}), "m")


def test_paths_keep_their_bytes_and_refuse_newlines():
    paths = ["train/a/1.JPEG", "train/b/caf\udce9.JPEG"]
    assert decode_paths(encode_paths(paths)) == paths
    with pytest.raises(FormatError, match="newline"):
        encode_paths(["a\nb.JPEG"])


def test_conversion_state_round_trips_and_damage_is_a_format_error():
    rows = [Row(0, 375, 500, None, 1234, 5), Row(2, 10, 20, "CMYK JPEG re-encoded to RGB JPEG", 99, -1)]
    assert decode_rows(encode_rows(rows), "b") == rows
    state = Progress("fp", 3, 2, 1, (Problem(1, "empty file"),))
    assert Progress.from_msgpack(state.to_msgpack(), "p") == state
    with pytest.raises(FormatError, match="p: conversion progress is damaged"):
        Progress.from_msgpack(msgpack.packb({"fingerprint": "fp", "next_item": 1.5, "count": 0, "batches": 0,
                                             "problems": []}), "p")
    with pytest.raises(FormatError, match="b: conversion progress is damaged"):
        decode_rows(msgpack.packb([[0, 0, 10, None, 1, 1]]), "b")
