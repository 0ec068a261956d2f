"""Thousands of damaged files: reading and decoding either succeeds or raises FormatError.

Mutations of a small valid file (6 chunks): truncation at every byte (so at every section and
field boundary), random bit flips, random bytes in every length, count and offset field, and
random bytes in the mask and token payloads. Length/offset and payload mutations are repeated
with the enclosing CRC recomputed, so they get past the checksum and reach the structural
checks and the entropy decoders behind it. The ``context`` coder's file has key and non-key
chunks, decoded in a chain: a damaged chunk breaks the chain of the chunks after it. A file with
an audio track gets the same treatment over the audio section's records (blocks, directory,
audio footer).
"""

from __future__ import annotations

import io
import itertools
import struct
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from infotok_codec.bitstream import (
    AudioPacket,
    AudioReader,
    AudioTrack,
    Chain,
    ChunkTokens,
    ContainerReader,
    ContainerWriter,
    FrequencyTables,
    Header,
    TokenReader,
    TokenWriter,
    decode_chunk,
    encode_chunk,
    side_writer,
)
from infotok_codec.bitstream.context_coder import fit_key_prior
from infotok_codec.errors import FormatError, ModelError
from infotok_codec.model import load_model
from infotok_codec.model.tokenizer import PACKED_MAGIC, pack_model
from infotok_codec.routing.router import lattice_then_error

LEVELS = (8, 8, 8, 5, 5, 5)
SEED = 20240617
_PLAIN = FrequencyTables.fit(np.random.default_rng(1).integers(0, 64000, 5000) // 7, LEVELS)
# With a key prior fitted on tokens like the fuzz stream's, so version-5 key chunks start from it.
_CHAINS = [
    [(g, np.random.default_rng(k).random(g.shape) < 0.6)]
    for k, g in enumerate(np.random.default_rng(2).integers(0, 64000, (6, 2, 3, 5)) // 7)
]
TABLES = _PLAIN.with_context_prior(fit_key_prior(_CHAINS, _PLAIN).to_json())


@dataclass(frozen=True)
class Field:
    """A byte range of the valid file and the CRC that covers it (start, end of covered
    bytes; the CRC is stored right after them)."""

    start: int
    size: int
    crc: tuple[int, int] | None


def make_header(coder: str, lattice_share: int, key_interval: int = 1) -> Header:
    return Header(
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
        key_interval=key_interval,
        rate_mode="size",
        rate_target=12345.0,
        refine=7,
    )


def make_valid_file(path: Path, coder: str, lattice_share: int, audio: bool = False) -> bytes:
    header = make_header(coder, lattice_share)
    rng = np.random.default_rng(SEED)
    chain = Chain()
    with ContainerWriter(path, header) as writer:
        for k in range(header.chunk_count):
            shape = header.mask_shape(header.chunk_span(k)[1])
            total = int(np.prod(shape))
            count = total if k == 2 else int(0.6 * total)
            mask = lattice_then_error(rng.random(shape), shape, count, lattice_share)
            indices = rng.integers(0, 64000, int(mask.sum())) // 7
            writer.write_chunk(encode_chunk(header, k, mask, indices, TABLES, chain))
        if audio:
            writer.close(side_writer(header, *audio_track(rng)))
    return path.read_bytes()


def audio_track(rng: np.random.Generator) -> tuple[list[AudioTrack], list[list[AudioPacket]]]:
    """Two tracks over the 22 frames at 25 fps (0.88 s), from 0.05 s before the first frame
    to 0.1 s after the last, in packets of 0.1 s of random bytes (the reader never decodes
    them)."""
    tracks = [
        AudioTrack("aac", 48000, 2, "stereo", Fraction(1, 48000), 128000, rng.bytes(5)),
        AudioTrack("ac3", 44100, 6, "5.1(side)", Fraction(1, 1000), 0, b""),
    ]
    packets = []
    for track in tracks:
        step = Fraction(1, 10) / track.time_base
        times = np.arange(-0.05, 0.98, 0.1)
        packets.append(
            [
                AudioPacket(
                    round(t / track.time_base),
                    round(step),
                    True,
                    rng.bytes(int(rng.integers(1, 9))),
                )
                for t in times
            ]
        )
    return tracks, packets


def audio_layout(path: Path) -> tuple[list[Field], list[Field]]:
    """(length/count/offset/time fields, packet data fields) of a valid file's audio section."""
    data = path.read_bytes()
    with ContainerReader(path) as reader:
        start, length = reader.side_span
    end = start + length
    (directory,) = struct.unpack_from("<Q", data, end - 16)
    crc = (directory, end - 20)
    numbers = [Field(end - 16, 8, None), Field(end - 8, 4, None), Field(end - 4, 4, None)]
    numbers += [
        Field(directory, 4, crc),
        Field(directory + 4, 1, crc),
        Field(directory + 5, 4, crc),
    ]
    pos = directory + 9
    for _ in range(data[directory + 4]):
        (codec,) = struct.unpack_from("<H", data, pos)
        numbers.append(Field(pos, 2, crc))
        pos += 2 + codec
        numbers += [Field(pos + o, n, crc) for o, n in ((0, 4), (4, 2), (6, 4), (10, 4), (14, 8))]
        pos += 22
        (layout,) = struct.unpack_from("<H", data, pos)
        numbers.append(Field(pos, 2, crc))
        pos += 2 + layout
        (extradata,) = struct.unpack_from("<I", data, pos)
        numbers.append(Field(pos, 4, crc))
        pos += 4 + extradata
    count = (end - 20 - pos) // 8
    offsets = [*struct.unpack_from(f"<{count}Q", data, pos), directory]
    numbers += [Field(pos + 8 * b, 8, crc) for b in range(count)]
    payloads = []
    for lo, hi in itertools.pairwise(offsets):
        block_crc = (lo, hi - 4)
        (packets,) = struct.unpack_from("<I", data, lo + 9)
        numbers += [Field(lo + o, n, block_crc) for o, n in ((0, 4), (4, 4), (8, 1), (9, 4))]
        for i in range(packets):
            entry = lo + 13 + 17 * i
            numbers += [
                Field(entry + o, n, block_crc) for o, n in ((0, 8), (8, 4), (12, 1), (13, 4))
            ]
        table_end = lo + 13 + 17 * packets
        if hi - 4 > table_end:
            payloads.append(Field(table_end, hi - 4 - table_end, block_crc))
    return numbers, payloads


def layout(path: Path) -> tuple[list[Field], list[Field]]:
    """(length/count/offset fields, payload fields) of a valid file."""
    data = path.read_bytes()
    (header_length,) = struct.unpack_from("<I", data, 6)
    header_crc = (0, 10 + header_length)
    numbers = [Field(6, 4, header_crc), Field(8, 4, header_crc)]  # length; width (overlaps)
    # The body ends with key_interval (u16), rate_mode ("size": u16 length, 4 bytes),
    # rate_target (f64) and refine (u16).
    body_end = 10 + header_length
    numbers += [
        Field(body_end - 18, 2, header_crc),
        Field(body_end - 16, 2, header_crc),
        Field(body_end - 10, 8, header_crc),
        Field(body_end - 2, 2, header_crc),
    ]
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
    index_crc = (offset, offset + 8 + 21 * count)
    numbers.append(Field(offset + 4, 4, index_crc))
    for k in range(count):
        entry = offset + 8 + 21 * k
        numbers += [
            Field(entry, 8, index_crc),
            Field(entry + 8, 8, index_crc),
            Field(entry + 16, 4, index_crc),
            Field(entry + 20, 1, index_crc),  # flags: the key flag
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


def read_everything(path: Path, chunks: bool = True) -> str:
    """Open, read and decode every chunk (unless not `chunks`) and every audio block; 'ok' or
    the section the FormatError names."""
    try:
        with ContainerReader(path) as reader:
            chain = Chain()
            for rec in reader.chunks() if chunks else ():
                decode_chunk(reader.header, rec, TABLES, chain)
            AudioReader(reader).read_span(0, reader.header.frames)
    except FormatError as e:
        return str(e).split(":")[0].split(" ")[0]
    return "ok"


@pytest.mark.parametrize(
    ("coder", "lattice_share", "key_interval"),
    [
        ("range", 0, 1),
        ("zstd", 0, 1),
        ("range", 192, 1),
        ("zstd", 256, 1),
        ("adaptive", 192, 1),
        ("adaptive", 256, 1),
        ("context", 192, 3),  # keys 0 and 3; chunk 2 keeps everything
        ("context", 0, 1),
    ],
)
def test_damaged_files_raise_format_error_and_nothing_else(
    tmp_path: Path, coder: str, lattice_share: int, key_interval: int
) -> None:
    valid = tmp_path / "valid.itok"
    data = make_valid_file(valid, coder, lattice_share, key_interval)
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


# -- token files (.npz) ----------------------------------------------------------------------
def make_valid_token_file(path: Path, compression: int) -> bytes:
    """The fuzz stream's header and 6 chunks as a token file, members stored or deflated."""
    header = make_header("adaptive", 192)
    rng = np.random.default_rng(SEED)
    with TokenWriter(path, header) as writer:
        for k in range(header.chunk_count):
            first, frames = header.chunk_span(k)
            shape = header.mask_shape(frames)
            mask = lattice_then_error(rng.random(shape), shape, int(0.6 * np.prod(shape)), 192)
            indices = np.where(mask, rng.integers(0, 64000, shape), -1)
            writer.write(ChunkTokens(k, first, frames, indices, mask))
    members = zip_members(path.read_bytes())
    path.write_bytes(rezip(members, compression))
    return path.read_bytes()


def zip_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def rezip(members: dict[str, bytes], compression: int) -> bytes:
    """A fresh archive (its CRCs and sizes computed) of `members`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


def token_mutations(
    data: bytes, compression: int, rng: np.random.Generator
) -> list[tuple[str, bytes]]:
    cases = [(f"truncate at {n}", data[:n]) for n in range(len(data))]
    for _ in range(400):
        out = bytearray(data)
        for bit in rng.integers(0, 8 * len(data), rng.integers(1, 5)):
            out[bit // 8] ^= 1 << (bit % 8)
        cases.append(("bit flips", bytes(out)))
    # Inside members, re-zipped so the zip CRCs match: the .npy headers and the values.
    members = zip_members(data)
    for name, content in members.items():
        header_end = content.index(b"\n") + 1
        for _ in range(12):
            out = bytearray(content)
            choice = rng.integers(4)
            if choice == 0:  # a few bytes of the .npy header
                at = int(rng.integers(header_end))
                out[at : at + int(rng.integers(1, 4))] = rng.bytes(int(rng.integers(1, 4)))
            elif choice == 1 and len(content) > header_end:  # a value
                at = int(rng.integers(header_end, len(content)))
                out[at] = int(rng.integers(256))
            elif choice == 2:  # cut short or extended
                cut = int(rng.integers(len(content)))
                out = out[:cut] if rng.integers(2) else out + rng.bytes(int(rng.integers(1, 9)))
            else:  # another member's content
                out = bytearray(members[str(rng.choice(list(members)))])
            changed = dict(members, **{name: bytes(out)})
            cases.append((f"member {name} (re-zipped)", rezip(changed, compression)))
    return cases


def read_token_file(path: Path) -> str:
    """Open and check every chunk; 'ok' or the key (section) the FormatError names."""
    try:
        with TokenReader(path) as reader:
            reader.validate()
    except FormatError as e:
        return str(e).split(":")[0]
    return "ok"


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_damaged_token_files_raise_format_error_and_nothing_else(
    tmp_path: Path, compression: int
) -> None:
    valid = tmp_path / "valid.npz"
    data = make_valid_token_file(valid, compression)
    assert read_token_file(valid) == "ok"
    cases = token_mutations(data, compression, np.random.default_rng(SEED))
    assert len(cases) >= 1000
    target = tmp_path / "damaged.npz"
    outcomes: Counter[str] = Counter()
    for what, damaged in cases:
        target.write_bytes(damaged)
        start = time.perf_counter()
        try:
            outcome = read_token_file(target)
        except Exception as e:
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
        outcomes[outcome.split("_")[0] if outcome[-1].isdigit() else outcome] += 1
        assert time.perf_counter() - start < 1.0, what
    # Faults reach the archive, the header fields and the chunks' values.
    assert {"token file", "indices", "keep", "fsq", "model"} <= {o.split("_")[0] for o in outcomes}


def test_damaged_audio_records_raise_format_error_and_nothing_else(tmp_path: Path) -> None:
    valid = tmp_path / "valid.itok"
    data = make_valid_file(valid, "zstd", 256, audio=True)
    assert read_everything(valid) == "ok"
    with ContainerReader(valid) as reader:
        audio_start = reader.side_span[0]
        assert len(AudioReader(reader).tracks) == 2
    numbers, payloads = audio_layout(valid)
    rng = np.random.default_rng(SEED)
    # The chunks' damage is covered above: here truncations and bit flips inside the audio
    # section, and its fields and packet data (`mutations` adds flips anywhere: dropped).
    cases = [(f"truncate at {n}", data[:n]) for n in range(audio_start, len(data))]
    for _ in range(400):
        out = bytearray(data)
        for bit in rng.integers(8 * audio_start, 8 * len(data), rng.integers(1, 5)):
            out[bit // 8] ^= 1 << (bit % 8)
        cases.append(("audio bit flips", bytes(out)))
    cases += [
        (what, damaged)
        for what, damaged in mutations(data, numbers, payloads, rng)
        if what.startswith(("field", "payload"))
    ]
    assert len(cases) >= 1000
    target = tmp_path / "damaged.itok"
    outcomes: Counter[str] = Counter()
    for what, damaged in cases:
        target.write_bytes(damaged)
        start = time.perf_counter()
        try:
            outcomes[read_everything(target, chunks=False)] += 1
        except Exception as e:
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
        assert time.perf_counter() - start < 1.0, what
    # The audio checks behind the CRCs are reached, not only the checksums.
    assert outcomes["audio"] > 500


def test_damaged_packed_models_raise_model_error_and_nothing_else(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Packed model files (`pack_model`: the shipped model's form), truncated, bit-flipped and
    overwritten, are refused with a ModelError, never another exception."""
    packed = tmp_path / "tiny.safetensors.zst"
    pack_model(tiny_model, packed)
    data = packed.read_bytes()
    rng = np.random.default_rng(SEED)
    cases = [data[:cut] for cut in sorted(set(rng.integers(0, len(data), 40).tolist()))]
    for _ in range(80):
        damaged = bytearray(data)
        for at in rng.integers(0, len(data), int(rng.integers(1, 4))):
            damaged[at] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(damaged))
    cases.append(PACKED_MAGIC + bytes(64))
    target = tmp_path / "damaged.safetensors.zst"
    refused = 0
    for damaged in cases:
        target.write_bytes(damaged)
        try:
            load_model(target)
        except ModelError:
            refused += 1
        except Exception as e:
            raise AssertionError(f"{type(e).__name__}: {e}") from e
    assert refused == len(cases)  # the frame carries a checksum: no damage loads
