"""Crafted JPEGs, as generators of variants: damage hidden behind a harmless first warning, scans hidden from
a parser that reads markers otherwise than the decoder. Whatever the dressing, a damaged image is never
stored as a good one, and a file that would cost thousands of passes per decode is refused before decoding."""
from __future__ import annotations

import itertools
import struct
import time

import cv2
import lmdb
import pytest
from helpers import opts, photo

from imagenet_pack import LmdbImageNet, convert, verify
from imagenet_pack.contract.codec import decode_checked
from imagenet_pack.contract.format import RECORDS_DB, Record, decode_record, encode_key, encode_record
from imagenet_pack.contract.probe import probe
from imagenet_pack.write.prepare import PrepareOptions, prepare


def _seg(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def _jfif(major: int, minor: int) -> bytes:
    return _seg(0xE0, b"JFIF\x00" + bytes([major, minor]) + b"\x00\x00\x01\x00\x01\x00\x00")


def _adobe(transform: int) -> bytes:
    return _seg(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([transform]))


# ------------------------------------------------------------------ damage behind a harmless warning

def _photo_jpeg(seed: int = 7) -> bytes:
    return cv2.imencode(".jpg", photo(300, 400, seed)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _body(jpeg: bytes) -> bytes:
    """Everything after SOI and OpenCV's JFIF segment."""
    assert jpeg[2:4] == b"\xff\xe0"
    return jpeg[4 + struct.unpack(">H", jpeg[4:6])[0]:]


# metadata libjpeg warns about and that says nothing of the pixels: each hides every later warning
HARMLESS = {
    "jfif 2.01": lambda body: b"\xff\xd8" + _jfif(2, 1) + body,
    "jfif 9.99": lambda body: b"\xff\xd8" + _jfif(9, 99) + body,
    "adobe transform 7": lambda body: b"\xff\xd8" + _adobe(7) + body,
    "jfif 3.00 and adobe 9": lambda body: b"\xff\xd8" + _jfif(3, 0) + _adobe(9) + body,
}


def _flip(fraction: float):
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        for k in range(12):
            i = int(len(out) * fraction) + k * 97
            if out[i] != 0xFF and out[i - 1] != 0xFF:
                out[i] ^= 0x3C
        return bytes(out)
    return damage


def _junk(fraction: float):
    def damage(data: bytes) -> bytes:
        at = int(len(data) * fraction)
        return data[:at] + b"\x12\x34\x56\x78" * 16 + data[at + 64:]
    return damage


# damage libjpeg reports (with its standard header) on this photo: bit rot, a cut, a run overwritten
DAMAGE = {
    "bits flipped at 20%": _flip(0.2),
    "bits flipped at 45%": _flip(0.45),
    "bits flipped at 75%": _flip(0.75),
    "cut at 40%, EOI appended": lambda data: data[:int(len(data) * 0.4)] + b"\xff\xd9",
    "a run overwritten at 30%": _junk(0.3),
    "a run overwritten at 80%": _junk(0.8),
}


@pytest.mark.parametrize("harmless, damage", list(itertools.product(HARMLESS, DAMAGE)))
def test_damage_behind_a_harmless_first_warning_is_still_damage(harmless, damage):
    body = _body(_photo_jpeg())
    broken = DAMAGE[damage](body)
    assert decode_checked(b"\xff\xd8" + _jfif(1, 1) + broken)[1]  # libjpeg sees the damage without the mask ...
    assert decode_checked(HARMLESS[harmless](body))[1] is None  # ... the mask alone is no damage (stored) ...
    damaged = HARMLESS[harmless](broken)  # ... and together
    rgb, found = decode_checked(damaged)
    assert rgb is not None and found, (harmless, damage)  # it decodes, into garbage: libjpeg said so, later
    skip = prepare(damaged, PrepareOptions()).skip
    assert skip and skip.startswith("damaged JPEG: libjpeg says"), skip


def test_masked_damage_is_named_by_convert_and_by_verify_decode(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    body = _body(_photo_jpeg())
    for name, make in HARMLESS.items():
        (folder / f"zz_{name.replace(' ', '_')}.JPEG").write_bytes(make(_flip(0.45)(body)))
    (folder / "zz_clean_jfif2.JPEG").write_bytes(HARMLESS["jfif 2.01"](body))
    report = convert(tree, tmp_path / "db", opts(splits=("train",), skip_bad=True))
    skipped = dict(report.splits[0].skipped)
    for name in HARMLESS:
        assert "damaged JPEG" in skipped[f"train/{folder.name}/zz_{name.replace(' ', '_')}.JPEG"]
    assert f"train/{folder.name}/zz_clean_jfif2.JPEG" in LmdbImageNet(tmp_path / "db", "train").paths
    env = lmdb.open(str(tmp_path / "db" / "train"), max_dbs=3)  # a masked-damaged record stored as it is
    with env.begin(write=True, db=env.open_db(RECORDS_DB)) as txn:
        record = decode_record(txn.get(encode_key(1)), "t")
        bad = HARMLESS["jfif 2.01"](DAMAGE["cut at 40%, EOI appended"](_body(record.image)))
        txn.put(encode_key(1), encode_record(Record(bad, record.target, record.height, record.width))[0])
    env.close()
    problems = verify(tmp_path / "db", decode=True).problems
    assert len(problems) == 1 and "record 1: libjpeg finds the image damaged" in problems[0], problems


# ------------------------------------------------------------------ scans hidden from the header parser

def _stuff(bits: str) -> bytes:
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        out.append(int(bits[i:i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0)
    return bytes(out)


def many_scans(scans: int, side: int = 256, hide: str = "none", jfif: tuple[int, int] = (1, 1)) -> bytes:
    """A valid progressive greyscale JPEG of ``scans`` AC scans (each a pass over the whole image), the scans
    dressed by ``hide``: "none"; "hop" (``FF 00 LL LL`` before runs of scans, which a parser that takes it
    for a segment jumps over, and libjpeg skips as stray bytes); "fill-hop" (the same behind ``FF FF``);
    "stray" (non-0xFF bytes before every scan, skipped by libjpeg)."""
    blocks = (side // 8) ** 2
    head = b"\xff\xd8" + _jfif(*jfif) + _seg(0xDB, b"\x00" + bytes([1] * 64))
    head += _seg(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
    head += _seg(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
    head += _seg(0xC4, b"\x10" + bytes([0, 0, 0, 15] + [0] * 12) + bytes([r << 4 for r in range(15)]))
    k = blocks.bit_length() - 1
    ac = _seg(0xDA, b"\x01\x01\x00\x01\x3f\x00") + _stuff(format(k, "04b") + format(blocks - (1 << k), f"0{k}b"))
    chunks = [_seg(0xDA, b"\x01\x01\x00\x00\x00\x00") + _stuff("0" * blocks)] + [ac] * scans
    out = bytearray(head)
    if hide == "stray":
        for chunk in chunks:
            out += b"\x12\x34" + chunk
        return bytes(out) + b"\xff\xd9"
    hop_marker = {"hop": b"\xff\x00", "fill-hop": b"\xff\xff\x00", "none": None}[hide]
    if hop_marker is None:
        return bytes(out + b"".join(chunks) + b"\xff\xd9")
    hop = len(out)
    out += hop_marker + b"\x00\x00"
    for chunk in chunks[:-1]:
        if len(out) + len(chunk) - hop - len(hop_marker) > 60000:  # close this hop, open the next
            gap = len(out) - hop - len(hop_marker)
            if gap & 0xFF == 0xFF:
                out += b"\x00"
                gap += 1
            out[hop + len(hop_marker):hop + len(hop_marker) + 2] = struct.pack(">H", gap)
            hop = len(out)
            out += hop_marker + b"\x00\x00"
        out += chunk
    gap = len(out) - hop - len(hop_marker)
    if gap & 0xFF == 0xFF:
        out += b"\x00"
        gap += 1
    out[hop + len(hop_marker):hop + len(hop_marker) + 2] = struct.pack(">H", gap)
    return bytes(out + chunks[-1] + b"\xff\xd9")


@pytest.mark.parametrize("hide, jfif", list(itertools.product(["none", "hop", "fill-hop", "stray"],
                                                             [(1, 1), (2, 1)])))
def test_hidden_scans_are_counted_as_the_decoder_meets_them_and_refused_at_once(hide, jfif):
    data = many_scans(3000, hide=hide, jfif=jfif)
    assert probe(data).scans >= 3001
    started = time.perf_counter()
    skip = prepare(data, PrepareOptions()).skip
    assert time.perf_counter() - started < 1.0
    assert skip and "scans, over the 64 scan limit" in skip, skip


@pytest.mark.parametrize("hide", ["none", "hop", "fill-hop", "stray"])
def test_the_hidden_scans_are_real_to_the_decoder(hide):
    """The dressing is what libjpeg reads through: the small variants decode (with a warning where bytes are
    stray), so a count that missed them would let the big ones through."""
    data = many_scans(20, side=64, hide=hide)
    rgb, damage = decode_checked(data)
    assert rgb is not None and rgb.shape == (64, 64, 3)
    assert (damage is None) == (hide == "none")
    assert probe(data).scans >= 21


def test_a_jpeg_of_thousands_of_scans_is_refused_at_once_and_named(tree, tmp_path):
    folder = next((tree / "train").iterdir())
    (folder / "zz_scans.JPEG").write_bytes(many_scans(3000, side=512))
    (folder / "zz_hidden.JPEG").write_bytes(many_scans(3000, side=512, hide="hop", jfif=(2, 1)))
    (folder / "zz_ten.JPEG").write_bytes(many_scans(10, side=512))  # an ordinary progressive file: stored
    started = time.perf_counter()
    report = convert(tree, tmp_path / "db", opts(splits=("train",), skip_bad=True))
    assert time.perf_counter() - started < 30
    skipped = dict(report.splits[0].skipped)
    for name in ("zz_scans", "zz_hidden"):
        assert "3001 scans, over the 64 scan limit" in skipped[f"train/{folder.name}/{name}.JPEG"], skipped
    assert f"train/{folder.name}/zz_ten.JPEG" in LmdbImageNet(tmp_path / "db", "train").paths


# ------------------------------------------------------------------ the stream walked as the decoder walks it

def _progressive(seed: int = 5) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(photo(120, 160, seed)).save(buf, "JPEG", quality=92, progressive=True)
    return buf.getvalue()


def _sos_offsets(data: bytes) -> list[int]:
    from imagenet_pack.contract.jpegstream import SOS, walk
    assert walk(data).end is not None
    return [i for i in range(len(data) - 1) if data[i:i + 2] == bytes([0xFF, SOS])]


@pytest.mark.parametrize("case", ["motion-photo trailer", "trailer of start-of-scan bytes", "big APP2 of FF DA",
                                  "comment of FF DA"])
def test_what_the_decoder_never_reads_is_never_counted_as_scans(case):
    """Bytes after the end-of-image marker (a motion photo's video, a trailer of FF DA pairs) and FF DA bytes
    inside an application segment or comment (skipped by their length) are not scans: such a baseline JPEG is
    stored, byte for byte, with its one scan counted."""
    import random
    good = _photo_jpeg(3)
    body = _body(good)
    data = {"motion-photo trailer": lambda: good + random.Random(5).randbytes(7 << 20),
            "trailer of start-of-scan bytes": lambda: good + b"\xff\xda" * 5000,
            "big APP2 of FF DA": lambda: b"\xff\xd8" + b"".join(_seg(0xE2, b"\xff\xda" * 30000) for _ in range(90))
            + body,
            "comment of FF DA": lambda: b"\xff\xd8" + _seg(0xFE, b"\xff\xda" * 32000) + body}[case]()
    assert probe(data).scans == 1 and probe(data).complete
    prepared = prepare(data, PrepareOptions())
    assert prepared.image == data and prepared.skip is None and prepared.fixed is None


@pytest.mark.parametrize("keep", [1, 2, 3, 5])
def test_a_progressive_jpeg_cut_at_a_scan_boundary_is_named_not_stored_as_good(keep):
    """Cut after any of its scans and closed with an end marker, a progressive JPEG decodes without a word,
    its later refinements missing: it is skipped, naming the missing refinement (stored as what decodes and
    listed as fixed only with keep_damaged); the whole file is stored as it is."""
    whole = _progressive()
    cut = whole[:_sos_offsets(whole)[keep]] + b"\xff\xd9"
    assert decode_checked(cut)[1] is None  # libjpeg says nothing
    assert probe(cut).unrefined and not probe(whole).unrefined
    skipped = prepare(cut, PrepareOptions())
    assert skipped.image is None and skipped.skip.startswith("incomplete progressive JPEG: its scans stop before")
    kept = prepare(cut, PrepareOptions(keep_damaged=True))
    assert kept.image is not None and kept.image != cut and kept.fixed.startswith("incomplete progressive JPEG")
    assert prepare(whole, PrepareOptions()).image == whole


@pytest.mark.parametrize("zeros", [16, 64, 300])
def test_zero_padding_before_the_end_marker_is_dropped_and_said_when_the_pixels_are_the_same(zeros):
    """Zero bytes left between the last scan and the end marker (libjpeg calls them extraneous) change no pixel:
    stored without them, listed as fixed; the same count of random bytes there is still damage."""
    import random
    good = _photo_jpeg(4)
    padded = good[:-2] + bytes(zeros) + b"\xff\xd9"
    prepared = prepare(padded, PrepareOptions())
    assert prepared.image == good and prepared.fixed.startswith(f"{zeros} padding bytes before the JPEG end marker")
    noise = bytes(random.Random(zeros).randrange(1, 255) for _ in range(zeros))
    assert prepare(good[:-2] + noise + b"\xff\xd9", PrepareOptions()).image is None
