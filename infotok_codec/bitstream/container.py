"""The ``.itok`` container: header, chunk records, seek index, footer.

Little-endian and versioned; docs/FORMAT.md specifies it byte by byte. A writer streams chunk
records and ends the file with a seek index and a fixed-size footer that points at it, so a
reader can open any chunk with one seek. The reader trusts nothing: every length, count, offset
and dimension is checked against the format's limits and against the file size before anything
is allocated, and every fault raises `FormatError` with a one-line message that names the
section (``header``, ``chunk K``, ``index``, ``footer``) and the field.

Version 4 adds an optional side section between the seek index and the footer, which holds
the audio track (`infotok_codec.bitstream.audio` reads and writes its records); this module only
locates it (`ContainerReader.side_span`) and lets the writer fill it (`ContainerWriter.close`).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from infotok_codec.bitstream import context_coder
from infotok_codec.bitstream.context_coder import Chain
from infotok_codec.bitstream.context_state import ContextState, KeyPrior
from infotok_codec.bitstream.entropy import (
    CODERS,
    FrequencyTables,
    check_indices_payload,
    decode_indices,
    encode_indices,
)
from infotok_codec.bitstream.lattice import SHARE_DENOMINATOR, mask_is_implied
from infotok_codec.bitstream.mask_coder import decode_mask, encode_mask
from infotok_codec.closing import Closing
from infotok_codec.errors import FormatError, InfotokError, ModelError
from infotok_codec.levels import validate_levels
from infotok_codec.outputs import WholeOrNothing, make_temp
from infotok_codec.rate import RATE_MODES, RateControl

MAGIC = b"ITOK"
FOOTER_MAGIC = b"KOTI"
RECORD_TAG = b"CHNK"
INDEX_TAG = b"INDX"
VERSION = 5
"""The version this module writes; docs/FORMAT.md says when it changes."""
READ_VERSIONS = (3, 4, 5)
"""Versions this module reads. Version 4's layout is version 5's; in version 4 a `context` key
chunk starts from counts derived from the frequency tables, in version 5 from the tables' key
prior when they carry one (`context_state.KeyPrior`). Version 3 has no key interval (every chunk
is a key chunk), no key flags in its index, no side section and no rate mode and target (its
mode is `budget`, its target the budget); its coders and their payloads are those of version
4."""
CHAINING_CODERS = ("context",)
"""Coders whose chunks may reference the chunk before (`Header.key_interval` above 1)."""

DIM_RANGE = (1, 16384)
FRAMES_RANGE = (1, 100_000_000)
CHUNK_FRAMES_RANGE = (4, 1024)
MAX_CHUNK_POSITIONS = 2**24
"""Latent positions in one chunk, at most: 16384×16384 frames in 16-frame chunks. Bounds what a
reader allocates for one chunk whatever its payloads claim."""
MODEL_HASH_BYTES = 32
MAX_MODEL_NAME_BYTES = 255
MAX_ROUTER_BYTES = 32
KEY_INTERVAL_RANGE = (1, 65535)
SPATIAL_STRIDE = 8
TEMPORAL_STRIDE = 4

_PREAMBLE = struct.Struct("<4sHI")  # magic, version, header body length
# width .. fps_den, chunk_frames, h, w, hash, budget, lattice_share
_HEADER_FIXED = struct.Struct("<5I3H32sdH")
_RECORD_FIXED = struct.Struct("<4sIQIHII")  # tag, index, first_frame, frames, T', kept, mask len
_INDEX_HEAD = struct.Struct("<4sI")  # tag, count
_INDEX_ENTRY_V3 = np.dtype([("offset", "<u8"), ("first_frame", "<u8"), ("frames", "<u4")])
_INDEX_ENTRY = np.dtype(
    [("offset", "<u8"), ("first_frame", "<u8"), ("frames", "<u4"), ("flags", "u1")]
)
_KEY_FLAG = 1
_FOOTER = struct.Struct("<QI4s")  # index offset, chunk count, magic
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U8 = struct.Struct("<B")
_F64 = struct.Struct("<d")

_RECORD_OVERHEAD = _RECORD_FIXED.size + 2 * _U32.size  # + tokens length + CRC
_MAX_HEADER_BODY = (
    _HEADER_FIXED.size
    + _U8.size
    + 16 * _U16.size
    + 3 * _U16.size
    + MAX_MODEL_NAME_BYTES
    + max(len(c) for c in CODERS)
    + MAX_ROUTER_BYTES
    + _U16.size  # key_interval
    + _U16.size
    + max(len(m) for m in RATE_MODES)
    + _F64.size
)
_MIN_FILE = (
    _PREAMBLE.size
    + _U32.size
    + _INDEX_HEAD.size
    + _INDEX_ENTRY_V3.itemsize
    + _U32.size
    + _FOOTER.size
    + _RECORD_OVERHEAD
)


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _check_range(section: str, name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise FormatError(f"{section}: {name} {value} outside [{lo}, {hi}]")


@dataclass(frozen=True)
class Header:
    """What a reader needs before the first chunk; validated on construction.

    Attributes:
        width, height: frame size in pixels, each in `DIM_RANGE`.
        frames: frame count of the video, in `FRAMES_RANGE`.
        fps_num, fps_den: frame rate as a rational, each in ``[1, 2**32 - 1]``.
        chunk_frames: frames per chunk (the last chunk may have fewer), a multiple of 4 in
            `CHUNK_FRAMES_RANGE`.
        latent_height, latent_width: the latent grid of one latent frame,
            ``ceil(height / 8)`` and ``ceil(width / 8)``.
        model_name: 1 to 255 bytes of printable UTF-8.
        model_hash: sha256 of the model weights, 32 bytes.
        fsq_levels: FSQ levels, see `infotok_codec.levels.validate_levels`.
        coder: the token coder, one of `CODERS`.
        router: the router that chose the keep-masks, 1 to 32 printable ASCII characters.
        budget: the mean rate the router aimed for, in ``(0, 1]``.
        lattice_share: in ``[0, 256]``: every chunk's keep-mask holds its lattice, the first
            ``lattice_count(kept, lattice_share)`` positions of the spread order
            (`infotok_codec.bitstream.lattice`), which the mask payload does not code.
        key_interval: chunk ``k`` is a *key chunk* when ``k % key_interval == 0``: it is coded
            alone; any other chunk may reference the chunk before it (`CHAINING_CODERS` only;
            1 for the others, and for version-3 files).
        rate_mode, rate_target: what the encode was asked for (`infotok_codec.rate`); the
            target of mode `budget` is the budget (None stands for it).
        version: the format version of the file it was read from (`READ_VERSIONS`); a writer
            writes only `VERSION`.

    Raises:
        FormatError: ``header: <field> ...`` for any value outside its range.
    """

    width: int
    height: int
    frames: int
    fps_num: int
    fps_den: int
    chunk_frames: int
    latent_height: int
    latent_width: int
    model_name: str
    model_hash: bytes
    fsq_levels: tuple[int, ...]
    coder: str
    router: str
    budget: float
    lattice_share: int = 0
    key_interval: int = 1
    rate_mode: str = "budget"
    rate_target: float | None = None
    version: int = VERSION

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise FormatError(f"header: {f.name} {value!r} is not an integer")
                object.__setattr__(self, f.name, int(value))  # numpy ints become plain ints
            if f.type == "str" and not isinstance(value, str):
                raise FormatError(f"header: {f.name} {value!r} is not a string")
        _check_range("header", "width", self.width, *DIM_RANGE)
        _check_range("header", "height", self.height, *DIM_RANGE)
        _check_range("header", "frames", self.frames, *FRAMES_RANGE)
        _check_range("header", "fps_num", self.fps_num, 1, 2**32 - 1)
        _check_range("header", "fps_den", self.fps_den, 1, 2**32 - 1)
        _check_range("header", "chunk_frames", self.chunk_frames, *CHUNK_FRAMES_RANGE)
        if self.chunk_frames % TEMPORAL_STRIDE:
            raise FormatError(
                f"header: chunk_frames {self.chunk_frames} is not a multiple of {TEMPORAL_STRIDE}"
            )
        for name, pixels in (("latent_height", self.height), ("latent_width", self.width)):
            expected = -(-pixels // SPATIAL_STRIDE)
            if getattr(self, name) != expected:
                raise FormatError(
                    f"header: {name} {getattr(self, name)} is not "
                    f"ceil({pixels}/{SPATIAL_STRIDE}) = {expected}"
                )
        positions = self.chunk_frames // TEMPORAL_STRIDE * self.latent_height * self.latent_width
        if positions > MAX_CHUNK_POSITIONS:
            raise FormatError(
                f"header: chunks of {self.chunk_frames} frames at {self.width}x{self.height} "
                f"have {positions} latent positions, more than {MAX_CHUNK_POSITIONS}"
            )
        try:
            encoded_name = self.model_name.encode("utf-8")
        except UnicodeEncodeError as e:
            raise FormatError("header: model_name is not encodable as UTF-8") from e
        if not 1 <= len(encoded_name) <= MAX_MODEL_NAME_BYTES or not self.model_name.isprintable():
            raise FormatError(
                f"header: model_name {self.model_name[:40]!r} is not 1 to "
                f"{MAX_MODEL_NAME_BYTES} bytes of printable UTF-8"
            )
        if not isinstance(self.model_hash, bytes) or len(self.model_hash) != MODEL_HASH_BYTES:
            raise FormatError(f"header: model_hash is not {MODEL_HASH_BYTES} bytes")
        try:
            object.__setattr__(self, "fsq_levels", validate_levels(self.fsq_levels))
        except ValueError as e:
            raise FormatError(f"header: {e}") from e
        if self.coder not in CODERS:
            raise FormatError(f"header: coder {self.coder!r} is not one of {CODERS}")
        if (
            not 1 <= len(self.router) <= MAX_ROUTER_BYTES
            or not self.router.isascii()
            or not self.router.isprintable()
        ):
            raise FormatError(
                f"header: router {self.router[:40]!r} is not 1 to "
                f"{MAX_ROUTER_BYTES} printable ASCII characters"
            )
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise FormatError(f"header: budget {self.budget!r} is not a number")
        object.__setattr__(self, "budget", float(self.budget))
        if not 0.0 < self.budget <= 1.0:  # also rejects NaN
            raise FormatError(f"header: budget {self.budget!r} outside (0, 1]")
        _check_range("header", "lattice_share", self.lattice_share, 0, SHARE_DENOMINATOR)
        _check_range("header", "key_interval", self.key_interval, *KEY_INTERVAL_RANGE)
        if self.version not in READ_VERSIONS:
            raise FormatError(f"header: version {self.version} is not one of {READ_VERSIONS}")
        if self.key_interval != 1 and self.coder not in CHAINING_CODERS:
            raise FormatError(
                f"header: key_interval {self.key_interval} with coder {self.coder!r}, "
                "which codes every chunk alone (key_interval 1)"
            )
        if self.rate_target is None and self.rate_mode == "budget":
            object.__setattr__(self, "rate_target", self.budget)
        if self.rate_mode == "budget" and self.rate_target != self.budget:
            raise FormatError(
                f"header: rate_target {self.rate_target!r} of mode budget is not the budget"
            )
        try:
            RateControl(self.rate_mode, self.rate_target)  # type: ignore[arg-type]
        except InfotokError as e:
            raise FormatError(f"header: rate {e}") from None

    @property
    def key_prior(self) -> bool:
        """Whether `context` key chunks start from the tables' key prior (when they carry one):
        from version 5 on."""
        return self.version >= 5

    def is_key(self, k: int) -> bool:
        """Whether chunk ``k`` is a key chunk, decodable without the chunks before it."""
        return k % self.key_interval == 0

    def key_before(self, k: int) -> int:
        """The last key chunk at or before chunk ``k``: where decoding chunk ``k`` starts."""
        return k - k % self.key_interval

    @property
    def rate(self) -> RateControl:
        """The rate mode and target the encode was asked for."""
        return RateControl(self.rate_mode, self.rate_target)  # type: ignore[arg-type]

    @property
    def chunk_count(self) -> int:
        """Number of chunk records: ``ceil(frames / chunk_frames)``."""
        return -(-self.frames // self.chunk_frames)

    def chunk_span(self, k: int) -> tuple[int, int]:
        """``(first_frame, frames)`` of chunk ``k``: chunks tile the video in order, all of
        ``chunk_frames`` frames but the last."""
        first = k * self.chunk_frames
        return first, min(self.chunk_frames, self.frames - first)

    def mask_shape(self, frames: int) -> tuple[int, int, int]:
        """``(T', h, w)`` latent grid of a chunk of ``frames`` frames,
        ``T' = ceil(frames / 4)``."""
        return -(-frames // TEMPORAL_STRIDE), self.latent_height, self.latent_width


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk as stored.

    Attributes:
        index: position in the file, 0-based.
        first_frame, frames: the frames it covers (see `Header.chunk_span`).
        latent_frames: ``T' = ceil(frames / 4)``.
        kept: number of stored indices, in ``[0, positions(header)]``.
        mask: coded keep-mask (`infotok_codec.bitstream.mask_coder.encode_mask`); ``b""``
            exactly when `kept` implies the mask (all kept, or only the lattice).
        tokens: coded indices of the kept positions in C order
            (`infotok_codec.bitstream.entropy.encode_indices`).
    """

    index: int
    first_frame: int
    frames: int
    latent_frames: int
    kept: int
    mask: bytes
    tokens: bytes

    def positions(self, header: Header) -> int:
        """Latent positions of this chunk: ``latent_frames * h * w``."""
        return self.latent_frames * header.latent_height * header.latent_width

    @property
    def nbytes(self) -> int:
        """Bytes the record takes in a file: framing, payloads and CRC."""
        return _RECORD_OVERHEAD + len(self.mask) + len(self.tokens)


def framing_bytes(header: Header) -> int:
    """Bytes of a file with `header` outside its chunk records: header, seek index, footer."""
    index = _INDEX_HEAD.size + header.chunk_count * _INDEX_ENTRY.itemsize + _U32.size
    return len(_encode_header(header)) + index + _FOOTER.size


def _check_record(header: Header, rec: ChunkRecord, k: int) -> None:
    """Everything a record must satisfy as chunk ``k`` of a file with ``header``."""
    where = f"chunk {k}"
    if rec.index != k:
        raise FormatError(f"{where}: index {rec.index} is not {k}")
    first, frames = header.chunk_span(k)
    if rec.first_frame != first:
        raise FormatError(f"{where}: first_frame {rec.first_frame} is not {first}")
    if rec.frames != frames:
        raise FormatError(f"{where}: frames {rec.frames} is not {frames}")
    latent = header.mask_shape(frames)[0]
    if rec.latent_frames != latent:
        raise FormatError(
            f"{where}: latent_frames {rec.latent_frames} is not "
            f"ceil({frames}/{TEMPORAL_STRIDE}) = {latent}"
        )
    _check_range(where, "kept", rec.kept, 0, rec.positions(header))
    if (not rec.mask) != mask_is_implied(rec.kept, rec.positions(header), header.lattice_share):
        raise FormatError(
            f"{where}: mask length {len(rec.mask)} with kept {rec.kept} of "
            f"{rec.positions(header)} positions at lattice share {header.lattice_share} "
            "(empty exactly when kept implies the mask)"
        )


def _encode_header(header: Header) -> bytes:
    body = bytearray(
        _HEADER_FIXED.pack(
            header.width,
            header.height,
            header.frames,
            header.fps_num,
            header.fps_den,
            header.chunk_frames,
            header.latent_height,
            header.latent_width,
            header.model_hash,
            header.budget,
            header.lattice_share,
        )
    )
    body += _U8.pack(len(header.fsq_levels))
    body += b"".join(_U16.pack(level) for level in header.fsq_levels)
    for text in (header.model_name, header.coder, header.router):
        raw = text.encode("utf-8")
        body += _U16.pack(len(raw)) + raw
    body += _U16.pack(header.key_interval)
    mode = header.rate_mode.encode("utf-8")
    body += _U16.pack(len(mode)) + mode
    body += _F64.pack(header.rate.target)
    out = _PREAMBLE.pack(MAGIC, VERSION, len(body)) + bytes(body)
    return out + _U32.pack(_crc(out))


class _Cursor:
    """Bounded reads from a bytes buffer: running past the end names the section and field."""

    def __init__(self, data: bytes, section: str, whole: str) -> None:
        self.data, self.pos, self.section, self.whole = data, 0, section, whole

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError(f"{self.section}: {field} runs past end of {self.whole}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: struct.Struct, field: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, field))

    def text(self, field: str) -> str:
        (length,) = self.unpack(_U16, f"{field} length")
        raw = self.take(length, f"{field} length {length}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{self.section}: {field} is not UTF-8") from e


def _decode_header(body: bytes, version: int) -> Header:
    """Mirror of `_encode_header` for the body (between preamble and CRC); a version-3 body
    ends after ``router``."""
    cur = _Cursor(body, "header", "header")
    (
        width,
        height,
        frames,
        fps_num,
        fps_den,
        chunk_frames,
        latent_height,
        latent_width,
        model_hash,
        budget,
        lattice_share,
    ) = cur.unpack(_HEADER_FIXED, "fixed fields")
    (count,) = cur.unpack(_U8, "fsq_levels count")
    levels = tuple(_U16.unpack(cur.take(2, f"fsq level {i}"))[0] for i in range(count))
    model_name, coder, router = (cur.text(f) for f in ("model_name", "coder", "router"))
    key_interval, last = 1, "router"
    rate_mode, rate_target = "budget", None
    if version >= 4:
        (key_interval,) = cur.unpack(_U16, "key_interval")
        rate_mode = cur.text("rate_mode")
        (rate_target,), last = cur.unpack(_F64, "rate_target"), "rate_target"
    elif coder in CHAINING_CODERS:
        raise FormatError(f"header: coder {coder!r} needs version 4, the file is version 3")
    if cur.pos != len(body):
        raise FormatError(f"header: {len(body) - cur.pos} trailing bytes after {last}")
    return Header(
        width=width,
        height=height,
        frames=frames,
        fps_num=fps_num,
        fps_den=fps_den,
        chunk_frames=chunk_frames,
        latent_height=latent_height,
        latent_width=latent_width,
        model_name=model_name,
        model_hash=model_hash,
        fsq_levels=levels,
        coder=coder,
        router=router,
        budget=budget,
        lattice_share=lattice_share,
        key_interval=key_interval,
        rate_mode=rate_mode,
        rate_target=rate_target,
        version=version,
    )


def _encode_record(rec: ChunkRecord) -> bytes:
    out = (
        _RECORD_FIXED.pack(
            RECORD_TAG,
            rec.index,
            rec.first_frame,
            rec.frames,
            rec.latent_frames,
            rec.kept,
            len(rec.mask),
        )
        + rec.mask
        + _U32.pack(len(rec.tokens))
        + rec.tokens
    )
    return out + _U32.pack(_crc(out))


def _decode_record(data: bytes, k: int) -> ChunkRecord:
    """Mirror of `_encode_record`; ``data`` is exactly the record's extent from the index."""
    where = f"chunk {k}"
    cur = _Cursor(data, where, "record")
    tag, index, first_frame, frames, latent_frames, kept, mask_length = cur.unpack(
        _RECORD_FIXED, "fixed fields"
    )
    if tag != RECORD_TAG:
        raise FormatError(f"{where}: tag {tag!r} is not {RECORD_TAG!r}")
    mask = cur.take(mask_length, f"mask length {mask_length}")
    (tokens_length,) = cur.unpack(_U32, "tokens length")
    tokens = cur.take(tokens_length, f"tokens length {tokens_length}")
    end = cur.pos
    (stored,) = cur.unpack(_U32, "CRC32")
    if cur.pos != len(data):
        raise FormatError(f"{where}: record is {cur.pos} bytes but the index gives it {len(data)}")
    if stored != _crc(data[:end]):
        raise FormatError(
            f"{where}: CRC32 mismatch (stored {stored:08x}, computed {_crc(data[:end]):08x})"
        )
    return ChunkRecord(
        index=index,
        first_frame=first_frame,
        frames=frames,
        latent_frames=latent_frames,
        kept=kept,
        mask=mask,
        tokens=tokens,
    )


class ContainerWriter(WholeOrNothing):
    """Writes an ``.itok`` file chunk by chunk.

    The file is written to a temporary file in the destination's directory and moved to
    ``path`` only by a successful `close`, so a reader never sees a partial file. Used as a
    context manager, an exception inside the block (or in `close`) removes the temporary file
    and leaves anything already at ``path`` untouched.

    Args:
        path: destination file.
        header: the file header (validated by `Header` itself).
    """

    def __init__(self, path: str | os.PathLike[str], header: Header) -> None:
        if header.version != VERSION:  # its chunks would be coded for another version
            raise ValueError(f"a header of version {header.version}: this writer writes {VERSION}")
        self.path = Path(path)
        self.header = header
        self._entries: list[tuple[int, int, int, int]] = []  # offset, first_frame, frames, flags
        self._tmp = Path(make_temp(self.path))
        self._file: BinaryIO | None = None
        try:
            self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed by close())
            self._file.write(_encode_header(header))
        except BaseException:
            self.abort()
            raise

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"writer for {self.path} is closed")
        return self._file

    def write_chunk(self, rec: ChunkRecord) -> None:
        """Append the next chunk; it must be chunk ``len(written)`` and satisfy everything the
        reader checks (`FormatError` otherwise, and nothing is written)."""
        file = self._open_file()
        _check_record(self.header, rec, len(self._entries))
        for name, value in (("mask", rec.mask), ("tokens", rec.tokens)):
            if len(value) > 2**32 - 1:
                raise FormatError(f"chunk {rec.index}: {name} length {len(value)} exceeds u32")
        offset = file.tell()
        file.write(_encode_record(rec))
        flags = _KEY_FLAG if self.header.is_key(rec.index) else 0
        self._entries.append((offset, rec.first_frame, rec.frames, flags))

    def close(self, side: Callable[[BinaryIO], None] | None = None) -> None:
        """Write the index, the side section and the footer and move the file into place.
        Closing twice is a no-op.

        Args:
            side: writes the side section (the audio track, `infotok_codec.bitstream.audio`) at the
                file's position, right after the index; None leaves it empty.

        Raises:
            FormatError: ``index: ...`` when fewer or more chunks were written than the header's
                frame count needs (the temporary file is removed).
        """
        if self._file is None:
            return
        file = self._file
        try:
            if len(self._entries) != self.header.chunk_count:
                raise FormatError(
                    f"index: {len(self._entries)} chunks written, header frames "
                    f"need {self.header.chunk_count}"
                )
            index_offset = file.tell()
            entries = np.array(self._entries, dtype=_INDEX_ENTRY)
            index = _INDEX_HEAD.pack(INDEX_TAG, len(entries)) + entries.tobytes()
            file.write(index + _U32.pack(_crc(index)))
            if side is not None:
                side(file)
            file.write(_FOOTER.pack(index_offset, len(entries), FOOTER_MAGIC))
            file.flush()
            os.fsync(file.fileno())
            file.close()
            self._file = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the temporary file; ``path`` is left as it was."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


class ContainerReader(Closing):
    """Reads an ``.itok`` file: header and index eagerly (validated), chunks on demand.

    Args:
        path: the file.

    Raises:
        InfotokError: ``<path>: no such file`` (or ``cannot read``) when it cannot be opened.
        FormatError: on the first fault found in the header, index or footer.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except FileNotFoundError:
            raise InfotokError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise InfotokError(f"{self.path}: cannot read ({exc.strerror})") from None
        try:
            self.file_size: int = os.fstat(self._file.fileno()).st_size
            self.header: Header = self._read_header()
            self._offsets, self._spans = self._read_index()
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def _read_at(self, offset: int, n: int, section: str) -> bytes:
        self._file.seek(offset)
        data = self._file.read(n)
        if len(data) != n:  # only if the file shrank after opening: sizes were checked
            raise FormatError(
                f"{section}: file ends at {offset + len(data)}, expected {offset + n}"
            )
        return data

    def _read_header(self) -> Header:
        if self.file_size < _MIN_FILE:
            raise FormatError(
                f"file: {self.file_size} bytes is too short for an .itok file "
                f"(at least {_MIN_FILE})"
            )
        preamble = self._read_at(0, _PREAMBLE.size, "header")
        magic, version, length = _PREAMBLE.unpack(preamble)
        if magic != MAGIC:
            raise FormatError(f"header: magic {magic!r} is not {MAGIC!r}")
        if version not in READ_VERSIONS:
            raise FormatError(
                f"header: unsupported version {version} (this reader reads versions "
                f"{', '.join(map(str, READ_VERSIONS))})"
            )
        self.version: int = version
        _check_range("header", "length", length, _HEADER_FIXED.size, _MAX_HEADER_BODY)
        self._header_end = _PREAMBLE.size + length + _U32.size
        if self._header_end > self.file_size:
            raise FormatError(f"header: length {length} runs past end of file")
        body_and_crc = self._read_at(_PREAMBLE.size, length + _U32.size, "header")
        (stored,) = _U32.unpack(body_and_crc[length:])
        computed = _crc(preamble + body_and_crc[:length])
        if stored != computed:
            raise FormatError(
                f"header: CRC32 mismatch (stored {stored:08x}, computed {computed:08x})"
            )
        return _decode_header(body_and_crc[:length], version)

    def _read_index(self) -> tuple[list[int], list[int]]:
        """Footer, then index; returns each chunk's offset and extent in bytes."""
        if self.file_size < self._header_end + _FOOTER.size:
            raise FormatError(
                f"footer: missing, the file ends {self.file_size - self._header_end}"
                " bytes after the header (truncated)"
            )
        index_offset, count, magic = _FOOTER.unpack(
            self._read_at(self.file_size - _FOOTER.size, _FOOTER.size, "footer")
        )
        if magic != FOOTER_MAGIC:
            raise FormatError(
                f"footer: magic {magic!r} is not {FOOTER_MAGIC!r} (file truncated "
                "or not an .itok file)"
            )
        expected = self.header.chunk_count
        if count != expected:
            raise FormatError(f"footer: chunk count {count}, header frames need {expected}")
        entry = _INDEX_ENTRY if self.version >= 4 else _INDEX_ENTRY_V3
        index_size = _INDEX_HEAD.size + count * entry.itemsize + _U32.size
        last_start = self.file_size - _FOOTER.size - index_size
        # Version 4 may hold a side section between the index and the footer; version 3 none.
        if index_offset > last_start or (self.version == 3 and index_offset != last_start):
            raise FormatError(
                f"footer: index offset {index_offset} outside the file (an index "
                f"of {count} chunks must start {'at' if self.version == 3 else 'by'} "
                f"{last_start})"
            )
        self.side_span: tuple[int, int] = (index_offset + index_size, last_start - index_offset)
        """``(offset, length)`` of the side section; length 0 when the file has none."""
        if index_offset < self._header_end + count * _RECORD_OVERHEAD:
            raise FormatError(
                f"footer: index offset {index_offset} leaves no room for {count} chunks"
            )
        data = self._read_at(index_offset, index_size, "index")
        (stored,) = _U32.unpack(data[-_U32.size :])
        if stored != _crc(data[: -_U32.size]):
            raise FormatError(
                f"index: CRC32 mismatch (stored {stored:08x}, computed "
                f"{_crc(data[: -_U32.size]):08x})"
            )
        tag, stored_count = _INDEX_HEAD.unpack(data[: _INDEX_HEAD.size])
        if tag != INDEX_TAG:
            raise FormatError(f"index: tag {tag!r} is not {INDEX_TAG!r}")
        if stored_count != count:
            raise FormatError(f"index: count {stored_count} is not the footer's {count}")
        entries = np.frombuffer(data, dtype=entry, count=count, offset=_INDEX_HEAD.size)
        # Vectorized so a long video's index is checked fast; each check reports its first
        # bad chunk. Offsets are checked against the file first, so later arithmetic on them
        # cannot overflow.
        raw = entries["offset"]
        outside = np.flatnonzero((raw < self._header_end) | (raw >= index_offset))
        if outside.size:
            k = int(outside[0])
            raise FormatError(f"index: offset {int(raw[k])} of chunk {k} outside the file")
        offsets = raw.astype(np.int64)
        if offsets[0] != self._header_end:
            raise FormatError(
                f"index: offset {offsets[0]} of chunk 0 is not the header end ({self._header_end})"
            )
        ends = np.append(offsets[1:], index_offset)
        short = np.flatnonzero(ends - offsets < _RECORD_OVERHEAD)
        if short.size:
            k = int(short[0])
            raise FormatError(
                f"index: chunk {k} spans {ends[k] - offsets[k]} bytes (offset {offsets[k]} to "
                f"{ends[k]}), less than a record's {_RECORD_OVERHEAD}"
            )
        first = np.arange(count, dtype=np.int64) * self.header.chunk_frames
        frames = np.minimum(self.header.chunk_frames, self.header.frames - first)
        wrong = np.flatnonzero((entries["first_frame"] != first) | (entries["frames"] != frames))
        if wrong.size:
            k = int(wrong[0])
            raise FormatError(
                f"index: chunk {k} covers frames {entries['first_frame'][k]}"
                f"+{entries['frames'][k]}, header says {first[k]}+{frames[k]}"
            )
        if self.version >= 4:
            keys = np.arange(count) % self.header.key_interval == 0
            wrong = np.flatnonzero(entries["flags"] != np.where(keys, _KEY_FLAG, 0))
            if wrong.size:
                k = int(wrong[0])
                raise FormatError(
                    f"index: chunk {k} has flags {int(entries['flags'][k])}, key interval "
                    f"{self.header.key_interval} makes it {'a key' if keys[k] else 'a non-key'}"
                    f" chunk (flags {_KEY_FLAG if keys[k] else 0})"
                )
        return offsets.tolist(), (ends - offsets).tolist()

    def read_side(self, offset: int, n: int, section: str) -> bytes:
        """``n`` bytes at file offset ``offset`` inside the side section (`side_span`).

        Raises:
            FormatError: ``<section>: ...`` when the span leaves the side section.
        """
        start, length = self.side_span
        if not (start <= offset and n >= 0 and offset + n <= start + length):
            raise FormatError(f"{section}: {n} bytes at {offset} outside the side section")
        return self._read_at(offset, n, section)

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def chunk_sizes(self) -> list[int]:
        """Bytes each chunk record takes in the file, in chunk order."""
        return list(self._spans)

    def chunk(self, k: int) -> ChunkRecord:
        """Chunk ``k`` (0-based), read with one seek; checks its CRC and fields.

        Raises:
            IndexError: ``k`` outside ``[0, len(self))``.
            FormatError: ``chunk k: ...`` for a damaged record.
        """
        if not 0 <= k < len(self._offsets):
            raise IndexError(f"chunk {k} outside [0, {len(self._offsets)})")
        rec = _decode_record(self._read_at(self._offsets[k], self._spans[k], f"chunk {k}"), k)
        _check_record(self.header, rec, k)
        return rec

    def chunks(self) -> Iterator[ChunkRecord]:
        """Every chunk in order."""
        for k in range(len(self)):
            yield self.chunk(k)


def encode_chunk(
    header: Header,
    k: int,
    mask: np.ndarray,
    indices: np.ndarray,
    tables: FrequencyTables,
    chain: Chain | None = None,
) -> ChunkRecord:
    """Code chunk ``k`` of a video into a record.

    Args:
        header: the file header (dimensions, coder, FSQ levels, key interval).
        k: chunk number; its frames follow from `Header.chunk_span`.
        mask: ``header.mask_shape(frames)`` bool, True at kept positions; it must hold its
            lattice (``header.lattice_share``).
        indices: ``(mask.sum(),)`` integers in ``[0, K)``: the kept positions' FSQ indices in
            C order of the mask.
        tables: the model's frequency tables, for ``header.fsq_levels``.
        chain: the coder's memory (`Chain`): needed for a non-key chunk, which must follow
            chunk ``k - 1`` in it; left holding what chunk ``k + 1`` needs.
    """
    _check_tables(header, tables)
    first, frames = header.chunk_span(k)
    shape = header.mask_shape(frames)
    if mask.shape != shape or len(indices) != int(mask.sum()):
        raise ValueError(
            f"chunk {k}: mask {mask.shape} with {len(indices)} indices; expected "
            f"mask {shape} and one index per kept position"
        )
    start = _chain_start(header, k, chain)
    end: ContextState | None = None
    if header.coder == "context":
        tokens, end = context_coder.encode_tokens(
            np.asarray(indices), mask, tables, start, key_prior=header.key_prior
        )
    else:
        tokens = encode_indices(indices, header.coder, tables, mask)
    record = ChunkRecord(
        index=k,
        first_frame=first,
        frames=frames,
        latent_frames=shape[0],
        kept=len(indices),
        mask=encode_mask(mask, header.lattice_share, _previous_mask(start)),
        tokens=tokens,
    )
    if chain is not None:
        chain.next_chunk, chain.state = k + 1, end
    return record


def decode_chunk(
    header: Header, rec: ChunkRecord, tables: FrequencyTables, chain: Chain | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror of `encode_chunk`: ``(mask, indices)``, mask ``(T', h, w)`` bool and indices
    ``(rec.kept,)`` int64 in ``[0, K)``. A non-key chunk needs the `chain` that decoded
    chunk ``rec.index - 1`` (decoding starts at `Header.key_before`).

    Raises:
        FormatError: ``chunk k: mask ...`` / ``chunk k: tokens ...`` for a damaged payload,
            or one coded from another state than the chain's (a broken reference chain).
        ModelError: the tables are for other FSQ levels than the stream.
    """
    _check_tables(header, tables)
    start = _chain_start(header, rec.index, chain)
    end: ContextState | None = None
    try:
        # The tokens' size first: it bounds `kept`, and with it the mask's lattice, before the
        # mask decoder allocates a grid (its own size check covers only the coded positions).
        if header.coder == "context":
            context_coder.check_payload(rec.tokens, rec.kept, start)
        else:
            check_indices_payload(rec.tokens, rec.kept, header.coder, tables)
        mask = decode_mask(
            rec.mask,
            header.mask_shape(rec.frames),
            kept=rec.kept,
            lattice_share=header.lattice_share,
            previous=_previous_mask(start),
        )
        if header.coder == "context":
            indices, end = context_coder.decode_tokens(
                rec.tokens, mask, tables, start, key_prior=header.key_prior
            )
        else:
            indices = decode_indices(rec.tokens, rec.kept, header.coder, tables, mask)
    except FormatError as e:
        raise FormatError(f"chunk {rec.index}: {e}") from e
    if chain is not None:
        chain.next_chunk, chain.state = rec.index + 1, end
    return mask, indices


def _chain_start(header: Header, k: int, chain: Chain | None) -> ContextState | None:
    """The state chunk ``k`` is coded from: None for a key chunk, else the chain's."""
    if header.is_key(k):
        return None
    if chain is None or chain.next_chunk != k or chain.state is None:
        raise ValueError(
            f"chunk {k} is not a key chunk: code chunks {header.key_before(k)} to {k - 1} "
            "first, with the same chain"
        )
    return chain.state


def _previous_mask(start: ContextState | None) -> np.ndarray | None:
    return None if start is None else start.last_mask


def _check_tables(header: Header, tables: FrequencyTables) -> None:
    if tables.levels != header.fsq_levels:
        raise ModelError(
            f"frequency tables are for fsq levels {list(tables.levels)}, the "
            f"stream uses {list(header.fsq_levels)}"
        )
    if header.coder == "context" and header.key_prior:
        KeyPrior.of(tables)  # a damaged prior: one ModelError, before any chunk
