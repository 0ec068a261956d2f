"""The .itok container: round trips, random access, atomic writes, and named faults."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infotok_codec.bitstream import (
    Chain,
    ChunkRecord,
    ContainerReader,
    ContainerWriter,
    FrequencyTables,
    Header,
    decode_chunk,
    encode_chunk,
)
from infotok_codec.bitstream.lattice import mask_is_implied
from infotok_codec.errors import FormatError, ModelError

LEVELS = (8, 8, 8, 5, 5, 5)
DATA = Path(__file__).parent / "data"


def make_header(**changes: object) -> Header:
    """A valid header (5 chunks, the last of 5 frames); latent dims follow width and height
    unless given."""
    width, height = changes.get("width", 40), changes.get("height", 24)
    fields: dict[str, object] = dict(
        width=width,
        height=height,
        frames=37,
        fps_num=30000,
        fps_den=1001,
        chunk_frames=8,
        latent_height=-(-height // 8) if isinstance(height, int) else 1,
        latent_width=-(-width // 8) if isinstance(width, int) else 1,
        model_name="infotok-small",
        model_hash=hashlib.sha256(b"weights").digest(),
        fsq_levels=LEVELS,
        coder="range",
        router="elbo",
        budget=0.5,
    )
    fields.update(changes)
    return Header(**fields)  # type: ignore[arg-type]


def make_chunks(header: Header, seed: int = 0) -> list[ChunkRecord]:
    """Real coded chunks: random masks (chunk 1 keeps everything) and random indices."""
    rng = np.random.default_rng(seed)
    tables = FrequencyTables.uniform(header.fsq_levels)
    records = []
    for k in range(header.chunk_count):
        shape = header.mask_shape(header.chunk_span(k)[1])
        mask = np.ones(shape, bool) if k == 1 else rng.random(shape) < 0.5
        indices = rng.integers(0, tables.codebook_size, int(mask.sum()))
        records.append(encode_chunk(header, k, mask, indices, tables))
    return records


def write_file(path: Path, header: Header, records: list[ChunkRecord]) -> None:
    with ContainerWriter(path, header) as writer:
        for rec in records:
            writer.write_chunk(rec)


@pytest.fixture
def valid(tmp_path: Path) -> tuple[Path, Header, list[ChunkRecord]]:
    header = make_header()
    records = make_chunks(header)
    path = tmp_path / "video.itok"
    write_file(path, header, records)
    return path, header, records


def chunk_offsets(path: Path) -> list[int]:
    """Where each chunk record starts: right after the header, records back to back."""
    (header_length,) = struct.unpack_from("<I", path.read_bytes(), 6)
    with ContainerReader(path) as reader:
        return [14 + header_length + sum(reader.chunk_sizes[:k]) for k in range(len(reader))]


def sections(path: Path) -> dict[str, int]:
    """Byte offsets where each section of a valid file starts."""
    data = path.read_bytes()
    (index_offset,) = struct.unpack_from("<Q", data, len(data) - 16)
    offsets = chunk_offsets(path)
    return {
        "header_body": 10,
        "header_crc": offsets[0] - 4,
        "chunk0": offsets[0],
        "chunk1": offsets[1],
        "index": index_offset,
        "footer": len(data) - 16,
    }


headers = st.builds(
    make_header,
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    frames=st.integers(1, 40),
    chunk_frames=st.sampled_from([4, 8, 16]),
    coder=st.sampled_from(["range", "zstd"]),
    fps_num=st.integers(1, 2**32 - 1),
    fps_den=st.integers(1, 2**32 - 1),
    model_name=st.text(
        st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=60
    ),
    model_hash=st.binary(min_size=32, max_size=32),
    fsq_levels=st.lists(st.integers(2, 256), min_size=1, max_size=4).map(tuple),
    router=st.sampled_from(["elbo", "fixed", "uniform", "oracle"]),
    budget=st.floats(1e-6, 1.0),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(header=headers, data=st.data())
def test_write_then_read_gives_the_same_header_and_chunks(
    tmp_path: Path, header: Header, data: st.DataObject
) -> None:
    records = []
    for k in range(header.chunk_count):
        first, frames = header.chunk_span(k)
        rec = ChunkRecord(
            index=k,
            first_frame=first,
            frames=frames,
            latent_frames=-(-frames // 4),
            kept=0,
            mask=b"",
            tokens=data.draw(st.binary(max_size=40)),
        )
        positions = rec.positions(header)
        kept = data.draw(st.integers(0, positions))
        implied = mask_is_implied(kept, positions, header.lattice_share)
        mask = b"" if implied else data.draw(st.binary(min_size=1, max_size=40))
        records.append(dataclasses.replace(rec, kept=kept, mask=mask))
    path = tmp_path / "rt.itok"
    write_file(path, header, records)
    with ContainerReader(path) as reader:
        assert reader.header == header
        assert list(reader.chunks()) == records
        assert sum(reader.chunk_sizes) < reader.file_size == path.stat().st_size


def test_chunks_decode_to_the_masks_and_indices_that_were_encoded(tmp_path: Path) -> None:
    header = make_header(coder="zstd")
    tables = FrequencyTables.uniform(LEVELS)
    rng = np.random.default_rng(5)
    originals = []
    with ContainerWriter(tmp_path / "v.itok", header) as writer:
        for k in range(header.chunk_count):
            mask = rng.random(header.mask_shape(header.chunk_span(k)[1])) < 0.3
            indices = rng.integers(0, 64000, int(mask.sum()))
            originals.append((mask, indices))
            writer.write_chunk(encode_chunk(header, k, mask, indices, tables))
    with ContainerReader(tmp_path / "v.itok") as reader:
        for rec, (mask, indices) in zip(reader.chunks(), originals, strict=True):
            got_mask, got_indices = decode_chunk(header, rec, tables)
            assert np.array_equal(got_mask, mask) and np.array_equal(got_indices, indices)


@pytest.mark.parametrize("router", ["fixed", "uniform"])
def test_a_masks_lattice_is_not_coded_and_comes_back(tmp_path: Path, router: str) -> None:
    from infotok_codec.bitstream.lattice import spread_order
    from infotok_codec.routing.router import lattice_share, select_positions

    share = lattice_share(router)
    header = make_header(width=128, height=96, frames=16, chunk_frames=16, lattice_share=share)
    plain = dataclasses.replace(header, lattice_share=0)
    tables = FrequencyTables.uniform(LEVELS)
    shape = header.mask_shape(16)
    rng = np.random.default_rng(share)
    mask = select_positions(router, rng.random(shape), shape, 300)
    indices = rng.integers(0, 64000, int(mask.sum()))
    rec = encode_chunk(header, 0, mask, indices, tables)
    assert len(rec.mask) < len(encode_chunk(plain, 0, mask, indices, tables).mask)
    assert (rec.mask == b"") == (router == "uniform")  # a uniform mask is all lattice
    write_file(tmp_path / "v.itok", header, [rec])
    with ContainerReader(tmp_path / "v.itok") as reader:
        assert reader.header.lattice_share == share
        got_mask, got_indices = decode_chunk(header, reader.chunk(0), tables)
    assert np.array_equal(got_mask, mask) and np.array_equal(got_indices, indices)
    holed = mask.copy()
    holed.flat[spread_order(shape)[0]] = False
    with pytest.raises(ValueError, match="drops positions of its lattice"):
        encode_chunk(header, 0, holed, indices[1:], tables)


def test_a_huge_all_lattice_chunk_is_refused_before_allocating() -> None:
    # 4 x 2048 x 2048 positions (the most a chunk may have), all but one in the lattice: the
    # mask is implied and has no payload, so only the tokens payload can refuse the claim.
    header = make_header(width=16384, height=16384, frames=16, chunk_frames=16, lattice_share=256)
    positions = 4 * 2048 * 2048
    rec = ChunkRecord(0, 0, 16, 4, positions - 1, b"", bytes(8))
    with pytest.raises(FormatError, match="chunk 0: tokens: 8 payload bytes cannot hold"):
        decode_chunk(header, rec, FrequencyTables.uniform(LEVELS))


def test_all_kept_chunk_stores_no_mask_and_decodes_to_all_true(valid) -> None:
    path, header, _ = valid
    with ContainerReader(path) as reader:
        rec = reader.chunk(1)
        assert rec.mask == b"" and rec.kept == rec.positions(header)
        mask, indices = decode_chunk(header, rec, FrequencyTables.uniform(LEVELS))
        assert mask.all() and len(indices) == rec.positions(header)


def test_random_access_reads_only_the_chunk_asked_for(valid) -> None:
    path, _, records = valid
    data = bytearray(path.read_bytes())
    offsets = chunk_offsets(path)
    for k in (0, 2, 3, 4):  # damage every chunk but 1
        data[offsets[k] + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    with ContainerReader(path) as reader:
        assert reader.chunk(1) == records[1]
        with pytest.raises(FormatError, match="chunk 3: CRC32 mismatch"):
            reader.chunk(3)


def test_chunk_sizes_and_len_follow_the_records(valid) -> None:
    path, _, records = valid
    with ContainerReader(path) as reader:
        assert len(reader) == len(records) == 5
        assert reader.chunk_sizes == [38 + len(r.mask) + len(r.tokens) for r in records]
        with pytest.raises(IndexError):
            reader.chunk(5)


def test_writer_leaves_nothing_behind_on_exception(tmp_path: Path) -> None:
    header = make_header()
    records = make_chunks(header)
    path = tmp_path / "out.itok"
    with pytest.raises(RuntimeError), ContainerWriter(path, header) as writer:
        writer.write_chunk(records[0])
        raise RuntimeError("encoder failed")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    header = make_header()
    records = make_chunks(header)
    path = tmp_path / "out.itok"
    path.write_bytes(b"precious")
    with (
        pytest.raises(FormatError, match="index: 2 chunks written, header frames need 5"),
        ContainerWriter(path, header) as writer,
    ):
        writer.write_chunk(records[0])
        writer.write_chunk(records[1])
    assert path.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [path]


def test_writer_rejects_a_record_the_reader_would_reject(tmp_path: Path) -> None:
    header = make_header()
    records = make_chunks(header)
    with ContainerWriter(tmp_path / "x.itok", header) as writer:
        with pytest.raises(FormatError, match="chunk 0: index 1 is not 0"):
            writer.write_chunk(records[1])
        bad = dataclasses.replace(records[0], kept=records[0].positions(header) + 1)
        with pytest.raises(FormatError, match=r"chunk 0: kept .* outside"):
            writer.write_chunk(bad)
        with pytest.raises(FormatError, match="chunk 0: mask length 0 with kept"):
            writer.write_chunk(dataclasses.replace(records[0], mask=b""))
        writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 0}, "header: width 0 outside \\[1, 16384\\]"),
        ({"frames": 0}, "header: frames 0 outside"),
        ({"chunk_frames": 6}, "header: chunk_frames 6 is not a multiple of 4"),
        ({"latent_width": 4}, "header: latent_width 4 is not ceil\\(40/8\\) = 5"),
        ({"fsq_levels": (8, 300)}, "header: fsq level 300 outside \\[2, 256\\]"),
        ({"fsq_levels": (2,) * 17}, "header: fsq_levels count 17"),
        ({"coder": "lzma"}, "header: coder 'lzma'"),
        ({"budget": 0.0}, "header: budget 0.0 outside"),
        ({"budget": float("nan")}, "header: budget nan outside"),
        ({"lattice_share": 257}, r"header: lattice_share 257 outside \[0, 256\]"),
        (
            {"width": 16384, "height": 16384, "chunk_frames": 32},
            "header: chunks of 32 frames at 16384x16384 have 33554432 latent positions",
        ),
        ({"model_hash": b"short"}, "header: model_hash is not 32 bytes"),
        ({"fps_den": 0}, "header: fps_den 0 outside"),
        ({"rate_mode": "crf", "rate_target": 23.0}, "header: rate unknown rate mode 'crf'"),
        ({"rate_mode": "quality", "rate_target": 0.0}, "header: rate quality target 0 outside"),
        ({"rate_mode": "size"}, "header: rate size target None is not a number"),
        ({"rate_target": 0.7}, "header: rate_target 0.7 of mode budget is not the budget"),
    ],
)
def test_header_out_of_range_names_the_field(change: dict, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        make_header(**change)


def test_tables_for_other_levels_are_a_model_error(valid) -> None:
    path, header, _ = valid
    with ContainerReader(path) as reader, pytest.raises(ModelError, match="fsq levels"):
        decode_chunk(header, reader.chunk(0), FrequencyTables.uniform((8, 8)))


# --- damage: each names the section and field -------------------------------------------


@pytest.mark.parametrize(
    ("boundary", "message"),
    [
        ("header_body", "file: 10 bytes is too short"),
        ("header_crc", "header: length 129 runs past end of file"),
        ("chunk0", "footer: missing, the file ends 0 bytes after the header"),
        ("chunk1", "footer: magic .* \\(file truncated"),
        ("index", "footer: magic .* \\(file truncated"),
        ("footer", "footer: magic .* \\(file truncated"),
    ],
)
def test_truncation_at_each_section_boundary_names_the_section(
    valid, boundary: str, message: str
) -> None:
    path = valid[0]
    cut = sections(path)[boundary]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(FormatError, match=message):
        ContainerReader(path)


def test_truncated_footer_is_caught_by_its_size_check(valid) -> None:
    path = valid[0]
    data = path.read_bytes()
    path.write_bytes(data[:-20] + data[-16:])  # index loses its last bytes, footer intact
    with pytest.raises(FormatError, match=r"footer: index offset .* outside the file"):
        ContainerReader(path)


def patch(path: Path, offset: int, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(new)] = new
    path.write_bytes(bytes(data))


def test_wrong_magic_is_named(valid) -> None:
    patch(valid[0], 0, b"RIFF")
    with pytest.raises(FormatError, match="header: magic b'RIFF' is not b'ITOK'"):
        ContainerReader(valid[0])


@pytest.mark.parametrize("version", [1, 2, 7])
def test_unsupported_version_is_named(valid, version: int) -> None:
    patch(valid[0], 4, struct.pack("<H", version))
    with pytest.raises(FormatError, match=f"header: unsupported version {version}"):
        ContainerReader(valid[0])


def test_header_bit_flip_fails_its_crc(valid) -> None:
    patch(valid[0], 12, b"\xff")
    with pytest.raises(FormatError, match="header: CRC32 mismatch"):
        ContainerReader(valid[0])


def test_chunk_bit_flip_fails_its_crc(valid) -> None:
    path = valid[0]
    offset = sections(path)["chunk1"] - 6  # inside chunk 0's tokens
    patch(path, offset, bytes([path.read_bytes()[offset] ^ 1]))
    with ContainerReader(path) as reader:
        with pytest.raises(FormatError, match="chunk 0: CRC32 mismatch"):
            reader.chunk(0)
        reader.chunk(1)


def test_mask_length_past_the_record_is_named(valid) -> None:
    path = valid[0]
    patch(path, sections(path)["chunk0"] + 26, struct.pack("<I", 912))
    with (
        ContainerReader(path) as reader,
        pytest.raises(FormatError, match="chunk 0: mask length 912 runs past end of record"),
    ):
        reader.chunk(0)


def test_index_bit_flip_fails_its_crc(valid) -> None:
    path = valid[0]
    patch(path, sections(path)["index"] + 8, b"\x00")
    with pytest.raises(FormatError, match="index: CRC32 mismatch"):
        ContainerReader(path)


def test_index_offset_outside_the_file_is_named(valid) -> None:
    path = valid[0]
    index = sections(path)["index"]
    data = bytearray(path.read_bytes())
    entry = index + 8 + 2 * 21
    data[entry : entry + 8] = struct.pack("<Q", 10**9)
    body = bytes(data[index : index + 8 + 5 * 21])
    data[index + 8 + 5 * 21 : index + 12 + 5 * 21] = struct.pack("<I", zlib.crc32(body))
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="index: offset 1000000000 of chunk 2 outside the file"):
        ContainerReader(path)


def test_footer_chunk_count_must_match_the_header(valid) -> None:
    path = valid[0]
    patch(path, sections(path)["footer"] + 8, struct.pack("<I", 4))
    with pytest.raises(FormatError, match="footer: chunk count 4, header frames need 5"):
        ContainerReader(path)


def test_damaged_tokens_payload_names_the_chunk(tmp_path: Path) -> None:
    header = make_header()
    tables = FrequencyTables.uniform(LEVELS)
    records = make_chunks(header)
    bad = dataclasses.replace(records[2], tokens=records[2].tokens[:-4])
    path = tmp_path / "t.itok"
    write_file(path, header, [*records[:2], bad, *records[3:]])
    with ContainerReader(path) as reader, pytest.raises(FormatError, match="chunk 2: tokens"):
        decode_chunk(header, reader.chunk(2), tables)


def test_not_an_itok_file(tmp_path: Path) -> None:
    path = tmp_path / "x.itok"
    path.write_bytes(b"\x00" * 200)
    with pytest.raises(FormatError, match="header: magic"):
        ContainerReader(path)


def test_the_index_marks_key_chunks_and_a_wrong_flag_is_named(tmp_path: Path) -> None:
    header = make_header(coder="context", key_interval=2)
    tables = FrequencyTables.uniform(LEVELS)
    rng = np.random.default_rng(0)
    chain = Chain()
    path = tmp_path / "k.itok"
    with ContainerWriter(path, header) as writer:
        for k in range(header.chunk_count):
            shape = header.mask_shape(header.chunk_span(k)[1])
            indices = rng.integers(0, tables.codebook_size, int(np.prod(shape)))
            writer.write_chunk(
                encode_chunk(header, k, np.ones(shape, bool), indices, tables, chain)
            )
    with ContainerReader(path) as reader:
        assert reader.header.key_interval == 2
        assert [reader.header.is_key(k) for k in range(5)] == [True, False, True, False, True]
        assert [reader.header.key_before(k) for k in range(5)] == [0, 0, 2, 2, 4]
    index = sections(path)["index"]
    data = bytearray(path.read_bytes())
    assert [data[index + 8 + 21 * k + 20] for k in range(5)] == [1, 0, 1, 0, 1]
    data[index + 8 + 21 * 1 + 20] = 1
    body = bytes(data[index : index + 8 + 5 * 21])
    data[index + 8 + 5 * 21 : index + 12 + 5 * 21] = struct.pack("<I", zlib.crc32(body))
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="index: chunk 1 has flags 1, key interval 2 makes it"):
        ContainerReader(path)


V3_DECODED = {
    "adaptive": "af5723e62e7b10d3e4b99f93a91b2548d8ea1a67208e117d8b5bf1fea87761f7",
    "range": "36975df2bcd355631cafc879df29d6c18cc236616abd3f6e3b03e97ae6af613a",
    "zstd": "aaac64c45a3726441b4eb9b840cfdfe434bfef3008f062ebd77dae8293020cf6",
}


@pytest.mark.parametrize("coder", sorted(V3_DECODED))
def test_version_3_streams_still_decode_bit_identically(coder: str) -> None:
    """tests/data/v3_*.itok were written by the version-3 code (commit 9731558); the hashes
    are of what that code decoded from them (packed masks, then indices as int64)."""
    tables = FrequencyTables.from_json((DATA / "v3_tables.json").read_text())
    with ContainerReader(DATA / f"v3_{coder}.itok") as reader:
        assert reader.version == 3 and reader.header.key_interval == 1
        digest = hashlib.sha256()
        for rec in reader.chunks():
            mask, indices = decode_chunk(reader.header, rec, tables)
            digest.update(np.packbits(mask).tobytes())
            digest.update(indices.astype("<i8").tobytes())
    assert digest.hexdigest() == V3_DECODED[coder]


CONTEXT_DECODED = {
    4: "7f1cb069d5b641a961e052ac7b388e15659d8475ed6f53643dfa1710e5a6c116",
    5: "fd42acddf91e572e9a02fdbec808f7b67939bcb46dfeecb723e4a6f17af11aa3",
}
"""What the code of each version decoded from tests/data/v{N}_context.itok with v{N}_tables.json
(the shipped model's tables of the time; version 5's carry a key prior): packed masks, then
indices as int64. Each file is 48 frames at 64×64, budget 0.6, key chunks 0 and 2: version 4's
of the sample clip (written by commit d69f911), version 5's of dev clip sam2_juggle (commit
82b2e26)."""


@pytest.mark.parametrize("version", sorted(CONTEXT_DECODED))
def test_older_context_streams_still_decode_bit_identically(version: int) -> None:
    tables = FrequencyTables.from_json((DATA / f"v{version}_tables.json").read_text())
    assert (tables.context_prior is not None) == (version >= 5)
    with ContainerReader(DATA / f"v{version}_context.itok") as reader:
        header = reader.header
        assert reader.version == version and header.coder == "context"
        assert header.key_interval == 2
        chain, digest = Chain(), hashlib.sha256()
        for rec in reader.chunks():
            mask, indices = decode_chunk(header, rec, tables, chain)
            digest.update(np.packbits(mask).tobytes())
            digest.update(indices.astype("<i8").tobytes())
    assert digest.hexdigest() == CONTEXT_DECODED[version]


def test_a_version_3_header_cannot_name_the_context_coder(tmp_path: Path) -> None:
    data = bytearray((DATA / "v3_range.itok").read_bytes())
    (length,) = struct.unpack_from("<I", data, 6)
    body = bytes(data[10 : 10 + length]).replace(b"\x05\x00range", b"\x07\x00context")
    header = data[:6] + struct.pack("<I", len(body)) + body
    new = header + struct.pack("<I", zlib.crc32(bytes(header)))
    path = tmp_path / "v3.itok"
    # The records follow the header; only the header is read before the fault.
    path.write_bytes(bytes(new) + bytes(data[14 + length :]))
    with pytest.raises(FormatError, match="coder 'context' needs version 4"):
        ContainerReader(path)


@pytest.mark.parametrize(
    ("mode", "target"), [("budget", 0.5), ("quality", 25.0), ("bitrate", 3e5), ("size", 8e5)]
)
def test_the_rate_mode_and_target_come_back(tmp_path: Path, mode: str, target: float) -> None:
    header = make_header(rate_mode=mode, rate_target=target)
    write_file(tmp_path / "v.itok", header, make_chunks(header))
    with ContainerReader(tmp_path / "v.itok") as reader:
        assert (reader.header.rate.mode, reader.header.rate.target) == (mode, target)
        assert reader.header == header


def test_the_refinement_steps_come_back_and_older_files_did_not_record_them(
    tmp_path: Path,
) -> None:
    header = make_header(refine=200)
    write_file(tmp_path / "v.itok", header, make_chunks(header))
    with ContainerReader(tmp_path / "v.itok") as reader:
        assert reader.header == header and reader.header.refine == 200
    for old in ("v5_context.itok", "v4_context.itok", "v3_range.itok"):
        with ContainerReader(DATA / old) as reader:
            assert reader.header.refine is None
    with pytest.raises(FormatError, match="refine is not recorded in a version-6 file"):
        make_header(refine=None)
    with pytest.raises(FormatError, match=r"refine 65536 outside \[0, 65535\]"):
        make_header(refine=65536)


@pytest.mark.parametrize("coder", sorted(V3_DECODED))
def test_version_3_files_still_read_as_mode_budget(coder: str) -> None:
    with ContainerReader(DATA / f"v3_{coder}.itok") as reader:
        rate = reader.header.rate
        assert reader.version == 3 and (rate.mode, rate.target) == ("budget", reader.header.budget)
