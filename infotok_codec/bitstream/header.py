"""The ``.itok`` format's constants and its header and chunk records, to and from bytes.

Little-endian and versioned; docs/FORMAT.md specifies it byte by byte. Here are the version, the
limits and the struct of every section, `Header` and `ChunkRecord` (each validated), and the
bytes of a header and of one chunk record, written and read back with every field checked; a
fault raises `FormatError` with a one-line message that names the section (``header``,
``chunk K``) and the field. The file around them (seek index, footer, side section) is
`infotok_codec.bitstream.container`'s, what a record's payloads hold is
`infotok_codec.bitstream.chunk_coding`'s: both, and the token files, rate control and the codec,
need the header and its limits without the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from infotok_codec.bitstream.entropy import CODERS
from infotok_codec.bitstream.lattice import SHARE_DENOMINATOR, mask_is_implied
from infotok_codec.errors import FormatError, InfotokError
from infotok_codec.levels import validate_levels
from infotok_codec.rate import RATE_MODES, RateControl

MAGIC = b"ITOK"
FOOTER_MAGIC = b"KOTI"
RECORD_TAG = b"CHNK"
INDEX_TAG = b"INDX"
VERSION = 6
"""The version `ContainerWriter` writes; docs/FORMAT.md says when it changes."""
READ_VERSIONS = (3, 4, 5, 6)
"""Versions `ContainerReader` reads. Version 6 is version 5 with the encoder's refinement steps at
the end of the header (`Header.refine`). Version 4's layout is version 5's; in version 4 a
`context` key chunk starts from counts derived from the frequency tables, in version 5 from the
tables' key prior when they carry one (`context_state.KeyPrior`). Version 3 has no key interval
(every chunk is a key chunk), no key flags in its index, no side section and no rate mode and
target (its mode is `budget`, its target the budget); its coders and their payloads are those of
version 4."""
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
REFINE_RANGE = (0, 65535)
SPATIAL_STRIDE = 8
TEMPORAL_STRIDE = 4

PREAMBLE = struct.Struct("<4sHI")  # magic, version, header body length
# width .. fps_den, chunk_frames, h, w, hash, budget, lattice_share
HEADER_FIXED = struct.Struct("<5I3H32sdH")
_RECORD_FIXED = struct.Struct("<4sIQIHII")  # tag, index, first_frame, frames, T', kept, mask len
INDEX_HEAD = struct.Struct("<4sI")  # tag, count
INDEX_ENTRY_V3 = np.dtype([("offset", "<u8"), ("first_frame", "<u8"), ("frames", "<u4")])
INDEX_ENTRY = np.dtype(
    [("offset", "<u8"), ("first_frame", "<u8"), ("frames", "<u4"), ("flags", "u1")]
)
KEY_FLAG = 1
FOOTER = struct.Struct("<QI4s")  # index offset, chunk count, magic
U32 = struct.Struct("<I")
U16 = struct.Struct("<H")
_U8 = struct.Struct("<B")
_F64 = struct.Struct("<d")

RECORD_OVERHEAD = _RECORD_FIXED.size + 2 * U32.size  # + tokens length + CRC
MAX_HEADER_BODY = (
    HEADER_FIXED.size
    + _U8.size
    + 16 * U16.size
    + 3 * U16.size
    + MAX_MODEL_NAME_BYTES
    + max(len(c) for c in CODERS)
    + MAX_ROUTER_BYTES
    + U16.size  # key_interval
    + U16.size
    + max(len(m) for m in RATE_MODES)
    + _F64.size
    + U16.size  # refine
)
MIN_FILE = (
    PREAMBLE.size
    + U32.size
    + INDEX_HEAD.size
    + INDEX_ENTRY_V3.itemsize
    + U32.size
    + FOOTER.size
    + RECORD_OVERHEAD
)


def crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def check_crc(covered: bytes | memoryview, stored: int, where: str) -> None:
    """Refuse `covered` unless its CRC32 is `stored`: every checksum the format holds."""
    computed = crc(covered)
    if stored != computed:
        raise FormatError(f"{where}: CRC32 mismatch (stored {stored:08x}, computed {computed:08x})")


def strip_crc(data: bytes, where: str) -> bytes:
    """A record that ends in the CRC32 of what precedes it, checked, without that CRC."""
    (stored,) = U32.unpack(data[-U32.size :])
    check_crc(data[: -U32.size], stored, where)
    return data[: -U32.size]


def check_range(section: str, name: str, value: int, lo: int, hi: int) -> None:
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
        refine: steps of encoder-side refinement every chunk's codes had
            (`infotok_codec.model.refine`), in `REFINE_RANGE`; None in files before version 6,
            which did not record it. The decoder does not need it: it says how the tokens were
            chosen, as an encoder's settings do.
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
    refine: int | None = 0
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
        check_range("header", "width", self.width, *DIM_RANGE)
        check_range("header", "height", self.height, *DIM_RANGE)
        check_range("header", "frames", self.frames, *FRAMES_RANGE)
        check_range("header", "fps_num", self.fps_num, 1, 2**32 - 1)
        check_range("header", "fps_den", self.fps_den, 1, 2**32 - 1)
        check_range("header", "chunk_frames", self.chunk_frames, *CHUNK_FRAMES_RANGE)
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
        check_range("header", "lattice_share", self.lattice_share, 0, SHARE_DENOMINATOR)
        check_range("header", "key_interval", self.key_interval, *KEY_INTERVAL_RANGE)
        if self.refine is None:
            if self.version >= 6:
                raise FormatError(
                    f"header: refine is not recorded in a version-{self.version} file"
                )
        elif isinstance(self.refine, bool) or not isinstance(self.refine, (int, np.integer)):
            raise FormatError(f"header: refine {self.refine!r} is not an integer")
        else:
            object.__setattr__(self, "refine", int(self.refine))
            check_range("header", "refine", self.refine, *REFINE_RANGE)
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
        return RECORD_OVERHEAD + len(self.mask) + len(self.tokens)


def framing_bytes(header: Header) -> int:
    """Bytes of a file with `header` outside its chunk records: header, seek index, footer."""
    index = INDEX_HEAD.size + header.chunk_count * INDEX_ENTRY.itemsize + U32.size
    return len(encode_header(header)) + index + FOOTER.size


def check_record(header: Header, rec: ChunkRecord, k: int) -> None:
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
    check_range(where, "kept", rec.kept, 0, rec.positions(header))
    if (not rec.mask) != mask_is_implied(rec.kept, rec.positions(header), header.lattice_share):
        raise FormatError(
            f"{where}: mask length {len(rec.mask)} with kept {rec.kept} of "
            f"{rec.positions(header)} positions at lattice share {header.lattice_share} "
            "(empty exactly when kept implies the mask)"
        )


def encode_header(header: Header) -> bytes:
    body = bytearray(
        HEADER_FIXED.pack(
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
    body += b"".join(U16.pack(level) for level in header.fsq_levels)
    for text in (header.model_name, header.coder, header.router):
        raw = text.encode("utf-8")
        body += U16.pack(len(raw)) + raw
    body += U16.pack(header.key_interval)
    mode = header.rate_mode.encode("utf-8")
    body += U16.pack(len(mode)) + mode
    body += _F64.pack(header.rate.target)
    body += U16.pack(header.refine)
    out = PREAMBLE.pack(MAGIC, VERSION, len(body)) + bytes(body)
    return out + U32.pack(crc(out))


class Cursor:
    """Bounded reads from a bytes buffer (a header, a chunk or audio record): running past the
    end names the section and field."""

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

    def text(self, field: str, encoding: Literal["utf-8", "ascii"] = "utf-8") -> str:
        """A string after its u16 length, in `encoding` ("utf-8" or "ascii")."""
        (length,) = self.unpack(U16, f"{field} length")
        raw = self.take(length, f"{field} length {length}")
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as e:
            name = {"utf-8": "UTF-8", "ascii": "ASCII"}[encoding]
            raise FormatError(f"{self.section}: {field} is not {name}") from e


def decode_header(body: bytes, version: int) -> Header:
    """Mirror of `encode_header` for the body (between preamble and CRC); a version-3 body
    ends after ``router``."""
    cur = Cursor(body, "header", "header")
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
    ) = cur.unpack(HEADER_FIXED, "fixed fields")
    (count,) = cur.unpack(_U8, "fsq_levels count")
    levels = tuple(U16.unpack(cur.take(2, f"fsq level {i}"))[0] for i in range(count))
    model_name, coder, router = (cur.text(f) for f in ("model_name", "coder", "router"))
    key_interval, last = 1, "router"
    rate_mode, rate_target, refine = "budget", None, None
    if version >= 4:
        (key_interval,) = cur.unpack(U16, "key_interval")
        rate_mode = cur.text("rate_mode")
        (rate_target,), last = cur.unpack(_F64, "rate_target"), "rate_target"
    elif coder in CHAINING_CODERS:
        raise FormatError(f"header: coder {coder!r} needs version 4, the file is version 3")
    if version >= 6:
        (refine,), last = cur.unpack(U16, "refine"), "refine"
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
        refine=refine,
        version=version,
    )


def encode_record(rec: ChunkRecord) -> bytes:
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
        + U32.pack(len(rec.tokens))
        + rec.tokens
    )
    return out + U32.pack(crc(out))


def decode_record(data: bytes, k: int) -> ChunkRecord:
    """Mirror of `encode_record`; ``data`` is exactly the record's extent from the index."""
    where = f"chunk {k}"
    cur = Cursor(data, where, "record")
    tag, index, first_frame, frames, latent_frames, kept, mask_length = cur.unpack(
        _RECORD_FIXED, "fixed fields"
    )
    if tag != RECORD_TAG:
        raise FormatError(f"{where}: tag {tag!r} is not {RECORD_TAG!r}")
    mask = cur.take(mask_length, f"mask length {mask_length}")
    (tokens_length,) = cur.unpack(U32, "tokens length")
    tokens = cur.take(tokens_length, f"tokens length {tokens_length}")
    end = cur.pos
    (stored,) = cur.unpack(U32, "CRC32")
    if cur.pos != len(data):
        raise FormatError(f"{where}: record is {cur.pos} bytes but the index gives it {len(data)}")
    check_crc(data[:end], stored, where)
    return ChunkRecord(
        index=index,
        first_frame=first_frame,
        frames=frames,
        latent_frames=latent_frames,
        kept=kept,
        mask=mask,
        tokens=tokens,
    )
