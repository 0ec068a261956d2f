"""Thousands of damaged files: reading and decoding either succeeds or raises FormatError.

Mutations of a small valid file (6 chunks): truncation at every byte (so at every section and
field boundary), random bit flips, random bytes in every length, count and offset field, and
random bytes in the mask and token payloads. Length/offset and payload mutations are repeated
with the enclosing CRC recomputed, so they get past the checksum and reach the structural
checks and the entropy decoders behind it.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from infotok_codec.container import (
    ContainerReader,
    ContainerWriter,
    Header,
    decode_chunk,
    encode_chunk,
)
from infotok_codec.entropy import FrequencyTables
from infotok_codec.errors import FormatError
from infotok_codec.router import lattice_then_error

LEVELS = (8, 8, 8, 5, 5, 5)
SEED = 20240617
TABLES = FrequencyTables.fit(np.random.default_rng(1).integers(0, 64000, 5000) // 7, LEVELS)


@dataclass(frozen=True)
class Field:
    """A byte range of the valid file and the CRC that covers it (start, end of covered
    bytes; the CRC is stored right after them)."""

    start: int
    size: int
    crc: tuple[int, int] | None


def make_valid_file(path: Path, coder: str, lattice_share: int) -> bytes:
    header = Header(
        width=40,
        height=20,
        frames=22,
        fps_num=25,
        fps_den=1,
        chunk_frames=4,
        latent_height=3,
        latent_width=5,
        model_name="fuzz",
        model_hash=bytes(32),
        fsq_levels=LEVELS,
        coder=coder,
        router="elbo",
        budget=0.6,
        lattice_share=lattice_share,
        rate_mode="size",
        rate_target=12345.0,
    )
    rng = np.random.default_rng(SEED)
    with ContainerWriter(path, header) as writer:
        for k in range(header.chunk_count):
            shape = header.mask_shape(header.chunk_span(k)[1])
            total = int(np.prod(shape))
            count = total if k == 2 else int(0.6 * total)
            mask = lattice_then_error(rng.random(shape), shape, count, lattice_share)
            indices = rng.integers(0, 64000, int(mask.sum())) // 7
            writer.write_chunk(encode_chunk(header, k, mask, indices, TABLES))
    return path.read_bytes()


def layout(path: Path) -> tuple[list[Field], list[Field]]:
    """(length/count/offset fields, payload fields) of a valid file."""
    data = path.read_bytes()
    (header_length,) = struct.unpack_from("<I", data, 6)
    header_crc = (0, 10 + header_length)
    numbers = [Field(6, 4, header_crc), Field(8, 4, header_crc)]  # length; width (overlaps)
    # The body ends with rate_mode ("size": u16 length, 4 bytes) and rate_target (f64).
    body_end = 10 + header_length
    numbers += [Field(body_end - 14, 2, header_crc), Field(body_end - 8, 8, header_crc)]
    payloads = []
    with ContainerReader(path) as reader:
        offset = 14 + header_length
        for size in reader.chunk_sizes:
            crc = (offset, offset + size - 4)
            (mask_length,) = struct.unpack_from("<I", data, offset + 26)
            (tokens_length,) = struct.unpack_from("<I", data, offset + 30 + mask_length)
            numbers += [
                Field(offset + 4, 4, crc),
                Field(offset + 8, 8, crc),
                Field(offset + 16, 4, crc),
                Field(offset + 20, 2, crc),
                Field(offset + 22, 4, crc),
                Field(offset + 26, 4, crc),
                Field(offset + 30 + mask_length, 4, crc),
            ]
            if mask_length:
                payloads.append(Field(offset + 30, mask_length, crc))
            if tokens_length:
                payloads.append(Field(offset + 34 + mask_length, tokens_length, crc))
            offset += size
        count = len(reader)
    index_crc = (offset, offset + 8 + 20 * count)
    numbers.append(Field(offset + 4, 4, index_crc))
    for k in range(count):
        entry = offset + 8 + 20 * k
        numbers += [
            Field(entry, 8, index_crc),
            Field(entry + 8, 8, index_crc),
            Field(entry + 16, 4, index_crc),
        ]
    numbers += [Field(len(data) - 16, 8, None), Field(len(data) - 8, 4, None)]
    return numbers, payloads


def overwrite(data: bytes, field: Field, new: bytes, fix_crc: bool) -> bytes:
    out = bytearray(data)
    out[field.start : field.start + field.size] = new
    if fix_crc and field.crc is not None:
        lo, hi = field.crc
        out[hi : hi + 4] = struct.pack("<I", zlib.crc32(bytes(out[lo:hi])))
    return bytes(out)


def mutations(
    data: bytes, numbers: list[Field], payloads: list[Field], rng: np.random.Generator
) -> list[tuple[str, bytes]]:
    cases = [(f"truncate at {n}", data[:n]) for n in range(len(data))]
    for _ in range(400):
        out = bytearray(data)
        for bit in rng.integers(0, 8 * len(data), rng.integers(1, 5)):
            out[bit // 8] ^= 1 << (bit % 8)
        cases.append(("bit flips", bytes(out)))
    for field in numbers:
        for fix in (False, True):
            for _ in range(6):
                choice = rng.integers(3)
                if choice == 0:  # random value
                    new = rng.bytes(field.size)
                else:  # near the true value: off-by-a-few lengths and offsets
                    value = int.from_bytes(data[field.start : field.start + field.size], "little")
                    delta = (
                        int(rng.integers(-40, 41))
                        if choice == 1
                        else 1 << int(rng.integers(0, 8 * field.size))
                    )
                    new = ((value + delta) % (1 << (8 * field.size))).to_bytes(field.size, "little")
                cases.append(
                    (f"field at {field.start} (crc fixed: {fix})", overwrite(data, field, new, fix))
                )
    for field in payloads:
        for _ in range(40):
            start = field.start + int(rng.integers(field.size))
            n = min(int(rng.integers(1, 5)), field.start + field.size - start)
            garbled = Field(start, n, field.crc)
            cases.append(
                (f"payload at {start} (crc fixed)", overwrite(data, garbled, rng.bytes(n), True))
            )
    return cases


def read_everything(path: Path) -> str:
    """Open, read and decode every chunk; 'ok' or the section the FormatError names."""
    try:
        with ContainerReader(path) as reader:
            for rec in reader.chunks():
                decode_chunk(reader.header, rec, TABLES)
    except FormatError as e:
        return str(e).split(":")[0].split(" ")[0]
    return "ok"


@pytest.mark.parametrize(
    ("coder", "lattice_share"),
    [
        ("range", 0),
        ("zstd", 0),
        ("range", 192),
        ("zstd", 256),
        ("adaptive", 192),
        ("adaptive", 256),
    ],
)
def test_damaged_files_raise_format_error_and_nothing_else(
    tmp_path: Path, coder: str, lattice_share: int
) -> None:
    valid = tmp_path / "valid.itok"
    data = make_valid_file(valid, coder, lattice_share)
    assert read_everything(valid) == "ok"
    numbers, payloads = layout(valid)
    cases = mutations(data, numbers, payloads, np.random.default_rng(SEED))
    assert len(cases) >= 1000  # per coder: >= 2000 in all
    target = tmp_path / "damaged.itok"
    outcomes: Counter[str] = Counter()
    for what, damaged in cases:
        target.write_bytes(damaged)
        start = time.perf_counter()
        try:
            outcomes[read_everything(target)] += 1
        except Exception as e:
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
        assert time.perf_counter() - start < 1.0, what
    # The mutations reach every layer, including the entropy decoders behind the CRCs.
    assert {"header", "chunk", "index", "footer"} <= set(outcomes)
    assert outcomes["chunk"] > 100
