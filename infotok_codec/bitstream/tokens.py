"""The token file (`.npz`): a stream's token indices and keep-masks as plain arrays.

`decode --tokens` writes one, `decode tokens.npz` and `pack` read one: it is the interface for
generative models, which read token files of real videos and write token files of their own.
A token file is a zip archive of `.npy` members (what `numpy.savez` writes and `numpy.load`
reads), holding every header field of the stream it came from, so `pack` can write the same
stream back byte for byte, and whole chunks, so any chunk decodes alone. README.md lists every
key.

The reader trusts nothing, as the `.itok` reader does: it parses each member's `.npy` header
itself (no pickles, only plain integer, bool, float and string dtypes), checks the shape against
the one the header fields imply before reading the data, so one chunk never costs more than a
stream's chunk may (`MAX_CHUNK_POSITIONS`), and checks every value (dtype, shape, index range,
-1 exactly where the mask drops, the mask's lattice). Faults raise `FormatError` naming the key.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from infotok_codec.bitstream.header import SPATIAL_STRIDE, Header
from infotok_codec.bitstream.lattice import lattice_mask
from infotok_codec.closing import Closing
from infotok_codec.errors import FormatError, InfotokError
from infotok_codec.levels import MAX_LEVELS
from infotok_codec.outputs import WholeOrNothing, make_temp

TOKENS_FORMAT = "infotok-tokens"
TOKENS_VERSION = 1
"""The only token-file version this module reads and writes; any change to a key, its dtype or
its meaning bumps it."""

HEADER_KEYS = (
    "format",
    "version",
    "width",
    "height",
    "frames",
    "fps",
    "chunk_frames",
    "fsq_levels",
    "model_name",
    "model_hash",
    "coder",
    "router",
    "budget",
    "lattice_share",
)
OPTIONAL_KEYS = ("key_interval", "rate_mode", "rate_target", "refine")
"""Header keys a token file may leave out. They say how the stream was coded, not what the
tokens are, and `pack` needs them to give back the same bytes: `key_interval` (chunks; default
1, every chunk a key chunk); `rate_mode` and `rate_target` (default: mode budget; the target
only with a mode, and left out for mode budget, whose target is the budget); `refine` (default
0; absent where the stream did not record it, before format version 6)."""
CHUNK_KEYS = ("indices", "keep", "first_frame")
_CHUNK_KEY = re.compile(r"(indices|keep|first_frame)_(0|[1-9][0-9]{0,8})")

_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 4096  # numpy writes ~128 bytes; anything near this is not one of ours
_MAX_STRING = 1024  # characters in a string member (a model name is at most 255 bytes)
_INTEGER, _BOOL, _NUMBER, _STRING = "iu", "b", "fiu", "U"


@dataclass
class ChunkTokens:
    """One chunk's tokens as stored.

    Attributes:
        index: chunk number in its stream.
        first_frame, frames: the frames it covers (`Header.chunk_span`).
        indices: ``(T', h, w)`` int64, the FSQ index in ``[0, K)`` at kept positions, -1 where
            dropped.
        keep: ``(T', h, w)`` bool, the keep-mask.
    """

    index: int
    first_frame: int
    frames: int
    indices: np.ndarray
    keep: np.ndarray


def check_chunk(header: Header, chunk: ChunkTokens) -> None:
    """Everything chunk `chunk.index` of a stream with `header` must satisfy.

    Raises:
        FormatError: ``indices_K: ...`` or ``keep_K: ...`` naming the fault.
    """
    k = chunk.index
    first, frames = header.chunk_span(k)
    if (chunk.first_frame, chunk.frames) != (first, frames):
        raise FormatError(
            f"first_frame_{k}: chunk {k} covers frames {chunk.first_frame}+{chunk.frames}, "
            f"the header fields say {first}+{frames}"
        )
    shape = header.mask_shape(frames)
    for key, array in (("indices", chunk.indices), ("keep", chunk.keep)):
        if array.shape != shape:
            raise FormatError(f"{key}_{k}: shape {array.shape} is not {shape}")
    if chunk.keep.dtype != np.bool_:
        raise FormatError(f"keep_{k}: dtype {chunk.keep.dtype} is not bool")
    if chunk.indices.dtype.kind not in _INTEGER:
        raise FormatError(f"indices_{k}: dtype {chunk.indices.dtype} is not an integer type")
    codebook = int(np.prod(header.fsq_levels))
    kept = chunk.indices[chunk.keep]
    outside = np.flatnonzero((kept < 0) | (kept >= codebook))
    if outside.size:
        where = tuple(int(v) for v in np.argwhere(chunk.keep)[outside[0]])
        raise FormatError(
            f"indices_{k}: index {int(kept[outside[0]])} at kept position {where} "
            f"outside [0, {codebook})"
        )
    dropped = np.argwhere(~chunk.keep & (chunk.indices != -1))
    if dropped.size:
        where = tuple(int(v) for v in dropped[0])
        raise FormatError(
            f"indices_{k}: index {int(chunk.indices[where])} at dropped position {where} "
            f"(keep_{k} is False there; dropped positions hold -1)"
        )
    lattice = lattice_mask(shape, len(kept), header.lattice_share)
    missing = np.argwhere(lattice & ~chunk.keep)
    if missing.size:
        raise FormatError(
            f"keep_{k}: drops lattice position {tuple(int(v) for v in missing[0])} (a mask "
            f"keeping {len(kept)} positions at lattice share {header.lattice_share} holds "
            "its lattice)"
        )


# -- writing ---------------------------------------------------------------------------------
def _header_arrays(header: Header) -> dict[str, np.ndarray]:
    return {
        "format": np.array(TOKENS_FORMAT),
        "version": np.array(TOKENS_VERSION, dtype=np.int64),
        "width": np.array(header.width, dtype=np.int64),
        "height": np.array(header.height, dtype=np.int64),
        "frames": np.array(header.frames, dtype=np.int64),
        "fps": np.array([header.fps_num, header.fps_den], dtype=np.int64),
        "chunk_frames": np.array(header.chunk_frames, dtype=np.int64),
        "fsq_levels": np.array(header.fsq_levels, dtype=np.int64),
        "model_name": np.array(header.model_name),
        "model_hash": np.array(header.model_hash.hex()),
        "coder": np.array(header.coder),
        "router": np.array(header.router),
        "budget": np.array(header.budget, dtype=np.float64),
        "lattice_share": np.array(header.lattice_share, dtype=np.int64),
        "key_interval": np.array(header.key_interval, dtype=np.int64),
        "rate_mode": np.array(header.rate_mode),
    } | _optional_arrays(header)


def _optional_arrays(header: Header) -> dict[str, np.ndarray]:
    # Mode budget's target is the budget: left out, so a file whose budget is edited stays whole.
    arrays = {}
    if header.rate_mode != "budget":
        arrays["rate_target"] = np.array(header.rate_target, dtype=np.float64)
    if header.refine is not None:
        arrays["refine"] = np.array(header.refine, dtype=np.int64)
    return arrays


class TokenWriter(WholeOrNothing):
    """Writes a token file chunk by chunk (memory stays one chunk), atomically.

    The archive is written to a temporary file beside `path` and moved into place by a
    successful `close`; used as a context manager, an exception removes it and leaves `path`
    as it was. Chunks must follow each other (any first chunk: a `--frames` decode writes only
    the chunks it covers) and pass `check_chunk`.
    """

    def __init__(self, path: str | os.PathLike[str], header: Header) -> None:
        self.path = Path(path)
        self.header = header
        self._next: int | None = None
        self._tmp = Path(make_temp(self.path))
        self._zip: zipfile.ZipFile | None = None
        try:
            self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_DEFLATED)
            for key, array in _header_arrays(header).items():
                self._member(key, array)
        except BaseException:
            self.abort()
            raise

    def _member(self, key: str, array: np.ndarray) -> None:
        if self._zip is None:
            raise ValueError(f"writer for {self.path} is closed")
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, array, allow_pickle=False)

    def write(self, chunk: ChunkTokens) -> None:
        """Append `chunk`: the one after the last written (`FormatError` otherwise)."""
        if self._next is not None and chunk.index != self._next:
            raise FormatError(f"chunk {chunk.index} written after chunk {self._next - 1}")
        check_chunk(self.header, chunk)
        self._member(f"indices_{chunk.index}", chunk.indices.astype(np.int64))
        self._member(f"keep_{chunk.index}", chunk.keep)
        self._member(f"first_frame_{chunk.index}", np.array(chunk.first_frame, dtype=np.int64))
        self._next = chunk.index + 1

    def close(self) -> None:
        """Finish the archive and move it into place; a token file holds at least one chunk."""
        if self._zip is None:
            return
        try:
            if self._next is None:
                raise InfotokError(f"{self.path}: no chunks to write")
            self._zip.close()
            self._zip = None
            with open(self._tmp, "rb") as file:
                os.fsync(file.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the temporary file; `path` is left as it was."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._tmp.unlink(missing_ok=True)


# -- reading ---------------------------------------------------------------------------------
def _npy_header(member: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse a `.npy` header strictly: version 1.0 or 2.0, a literal dict of exactly `descr`
    (a plain dtype string), `fortran_order` and `shape`. Returns (shape, fortran, dtype)."""
    magic = member.read(8)
    if len(magic) != 8 or magic[:6] != _NPY_MAGIC:
        raise FormatError(f"{key}: not a .npy array (magic {magic[:6]!r})")
    length_format = {(1, 0): "<H", (2, 0): "<I"}.get((magic[6], magic[7]))
    if length_format is None:
        raise FormatError(f"{key}: .npy version {magic[6]}.{magic[7]} is not 1.0 or 2.0")
    raw = member.read(struct.calcsize(length_format))
    if len(raw) != struct.calcsize(length_format):
        raise FormatError(f"{key}: .npy header length runs past the end of the member")
    (length,) = struct.unpack(length_format, raw)
    if length > _MAX_NPY_HEADER:
        raise FormatError(f"{key}: .npy header of {length} bytes (at most {_MAX_NPY_HEADER})")
    text = member.read(length)
    if len(text) != length:
        raise FormatError(f"{key}: .npy header runs past the end of the member")
    try:
        fields = ast.literal_eval(text.decode("latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        raise FormatError(f"{key}: .npy header is not a literal dict") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise FormatError(f"{key}: .npy header lacks descr, fortran_order and shape")
    shape, fortran, descr = fields["shape"], fields["fortran_order"], fields["descr"]
    if not isinstance(shape, tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise FormatError(f"{key}: .npy shape {shape!r} is not a tuple of sizes")
    if not isinstance(fortran, bool) or not isinstance(descr, str):
        raise FormatError(f"{key}: .npy header has a non-plain dtype or order")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise FormatError(f"{key}: .npy dtype {descr[:40]!r} is not a dtype") from None
    return shape, fortran, dtype


_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what numpy.savez(_compressed) writes
_ENCRYPTED = 0x1

_KIND_NAMES = {_INTEGER: "an integer", _BOOL: "a bool", _NUMBER: "a number", _STRING: "a string"}


class TokenReader(Closing):
    """Reads a token file: header fields eagerly (validated), chunks on demand.

    Args:
        path: the `.npz` file.

    Raises:
        InfotokError: ``<path>: no such file`` (or ``cannot read``).
        FormatError: the first fault in the archive, its keys or its header fields.
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
            self._zip = self._open_archive()
        except BaseException:
            self._file.close()
            raise
        try:
            self._members = {info.filename: info for info in self._zip.infolist()}
            self.chunk_indices = self._check_keys()
            self.header = self._read_header()
            if self.chunk_indices.stop > self.header.chunk_count:
                raise FormatError(
                    f"indices_{self.chunk_indices.stop - 1}: chunk {self.chunk_indices.stop - 1}"
                    f" of a video of {self.header.chunk_count} chunks"
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def _open_archive(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError) as e:
            raise FormatError(f"token file: not a zip archive (.npz): {e}") from None

    def _check_keys(self) -> range:
        """Every member is a known key; returns the chunks present (consecutive, at least one)."""
        keys: set[str] = set()
        chunks: dict[str, set[int]] = {name: set() for name in CHUNK_KEYS}
        for name in self._members:
            key = name.removesuffix(".npy")
            match = _CHUNK_KEY.fullmatch(key)
            if name == key or (key not in HEADER_KEYS + OPTIONAL_KEYS and match is None):
                raise FormatError(f"token file: unknown member {name[:60]!r}")
            keys.add(key)
            if match is not None:
                chunks[match.group(1)].add(int(match.group(2)))
        if "format" not in keys:
            raise FormatError("token file: no 'format' key (not an infotok token file)")
        missing = [key for key in HEADER_KEYS if key not in keys]
        if missing:
            raise FormatError(f"token file: no {missing[0]!r} key")
        present = chunks["indices"] | chunks["keep"] | chunks["first_frame"]
        if not present:
            raise FormatError("token file: holds no chunks (no indices_K keys)")
        for name in CHUNK_KEYS:
            absent = sorted(present - chunks[name])
            if absent:
                raise FormatError(f"{name}_{absent[0]}: missing (chunk {absent[0]} is incomplete)")
        lo, hi = min(present), max(present) + 1
        if len(present) != hi - lo:
            gap = min(set(range(lo, hi)) - present)
            raise FormatError(f"indices_{gap}: missing (chunks {lo} to {hi - 1} must follow on)")
        return range(lo, hi)

    def _array(self, key: str, kinds: str, shape: tuple[int, ...] | range) -> np.ndarray:
        """Member `key` as an array of one of `kinds`, of `shape` (a range: 1-D of such a
        length), read only after its header matches; its bytes must fill the member exactly."""
        info = self._members[f"{key}.npy"]
        if info.compress_type not in _COMPRESSIONS or info.flag_bits & _ENCRYPTED:
            raise FormatError(f"{key}: stored encrypted or compressed other than by deflate")
        try:
            with self._zip.open(info) as member:
                stored, fortran, dtype = _npy_header(member, key)
                if dtype.kind not in kinds or dtype.shape or dtype.names is not None:
                    raise FormatError(f"{key}: dtype {dtype} is not {_KIND_NAMES[kinds]} type")
                if isinstance(shape, range):
                    if len(stored) != 1 or stored[0] not in shape:
                        raise FormatError(
                            f"{key}: shape {stored} is not ({shape.start}..{shape.stop - 1},)"
                        )
                elif stored != shape:
                    raise FormatError(f"{key}: shape {stored} is not {shape}")
                if dtype.kind == "U" and dtype.itemsize > 4 * _MAX_STRING:
                    raise FormatError(f"{key}: strings of {dtype.itemsize // 4} characters")
                size = int(np.prod(stored, dtype=np.int64)) * dtype.itemsize
                if info.file_size != member.tell() + size:
                    raise FormatError(
                        f"{key}: member holds {info.file_size - member.tell()} data bytes, "
                        f"its header needs {size}"
                    )
                data = member.read(size)
                if len(data) != size:
                    raise FormatError(f"{key}: data ends after {len(data)} of {size} bytes")
        # RuntimeError: zipfile's word for encrypted members and (NotImplementedError) for
        # compression methods or flags it does not support, as a damaged local header may claim.
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FormatError(f"{key}: damaged member ({first})") from None
        array = np.frombuffer(data, dtype=dtype).reshape(stored, order="F" if fortran else "C")
        return array.copy()  # writable (torch takes it) and in C order

    def _int(self, key: str, shape: tuple[int, ...] | range = ()) -> np.ndarray:
        array = self._array(key, _INTEGER, shape)
        if array.dtype == np.uint64 and array.size and int(array.max()) >= 2**63:
            raise FormatError(f"{key}: value {int(array.max())} does not fit int64")
        return array.astype(np.int64)

    def _text(self, key: str) -> str:
        array = self._array(key, _STRING, ())
        try:
            return str(array.item())
        except (ValueError, UnicodeError):
            raise FormatError(f"{key}: not a valid string") from None

    def _read_header(self) -> Header:
        if self._text("format") != TOKENS_FORMAT:
            raise FormatError(f"format: {self._text('format')[:40]!r} is not {TOKENS_FORMAT!r}")
        version = int(self._int("version"))
        if version != TOKENS_VERSION:
            raise FormatError(
                f"version: unsupported token-file version {version} (this reader reads "
                f"version {TOKENS_VERSION})"
            )
        model_hash = self._text("model_hash")
        if not re.fullmatch(r"[0-9a-f]{64}", model_hash):
            raise FormatError(f"model_hash: {model_hash[:70]!r} is not 64 lowercase hex digits")
        width, height = int(self._int("width")), int(self._int("height"))
        fps = self._int("fps", (2,))
        budget = float(self._array("budget", _NUMBER, ()).item())
        if self._has("rate_target") and not self._has("rate_mode"):
            raise FormatError("rate_target: given without rate_mode")
        return Header(
            width=width,
            height=height,
            frames=int(self._int("frames")),
            fps_num=int(fps[0]),
            fps_den=int(fps[1]),
            chunk_frames=int(self._int("chunk_frames")),
            # Derived rather than stored: Header checks the rest against them.
            latent_height=-(-height // SPATIAL_STRIDE),
            latent_width=-(-width // SPATIAL_STRIDE),
            model_name=self._text("model_name"),
            model_hash=bytes.fromhex(model_hash),
            fsq_levels=tuple(int(v) for v in self._int("fsq_levels", range(1, MAX_LEVELS + 1))),
            coder=self._text("coder"),
            router=self._text("router"),
            budget=budget,
            lattice_share=int(self._int("lattice_share")),
            key_interval=int(self._int("key_interval")) if self._has("key_interval") else 1,
            rate_mode=self._text("rate_mode") if self._has("rate_mode") else "budget",
            rate_target=(
                float(self._array("rate_target", _NUMBER, ()).item())
                if self._has("rate_target")
                else None
            ),
            refine=int(self._int("refine")) if self._has("refine") else 0,
        )

    def _has(self, key: str) -> bool:
        """Whether optional key `key` is present (`OPTIONAL_KEYS`)."""
        return f"{key}.npy" in self._members

    @property
    def span(self) -> tuple[int, int]:
        """Frames ``[first, stop)`` the chunks present cover."""
        first = self.header.chunk_span(self.chunk_indices.start)[0]
        last_first, last_frames = self.header.chunk_span(self.chunk_indices.stop - 1)
        return first, last_first + last_frames

    @property
    def complete(self) -> bool:
        """Whether every chunk of the video is present (`pack` needs them all)."""
        return len(self.chunk_indices) == self.header.chunk_count

    def chunk(self, k: int) -> ChunkTokens:
        """Chunk `k`, validated (`check_chunk`); reads only its three members."""
        if k not in self.chunk_indices:
            raise IndexError(f"chunk {k} outside {self.chunk_indices}")
        frames = self.header.chunk_span(k)[1]
        shape = self.header.mask_shape(frames)
        chunk = ChunkTokens(
            index=k,
            first_frame=int(self._int(f"first_frame_{k}")),
            frames=frames,
            indices=self._int(f"indices_{k}", shape),
            keep=self._array(f"keep_{k}", _BOOL, shape),
        )
        check_chunk(self.header, chunk)
        return chunk

    def validate(self) -> None:
        """Read and check every chunk (`FormatError` on the first fault), keeping none."""
        for _ in self.chunks():
            pass

    def chunks(self, first: int = 0, stop: int | None = None) -> Iterator[ChunkTokens]:
        """The chunks present that overlap frames ``[first, stop)``, in order."""
        stop = self.header.frames if stop is None else stop
        cf = self.header.chunk_frames
        lo = max(first // cf, self.chunk_indices.start)
        hi = min(-(-stop // cf), self.chunk_indices.stop)
        for k in range(lo, hi):
            yield self.chunk(k)
