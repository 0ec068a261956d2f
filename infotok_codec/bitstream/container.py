"""The ``.itok`` container: the file of chunk records, seek index and footer, written and read.

Little-endian and versioned; docs/FORMAT.md specifies it byte by byte. A writer streams chunk
records and ends the file with a seek index and a fixed-size footer that points at it, so a
reader can open any chunk with one seek. The header's and a record's bytes and the format's
limits are `infotok_codec.bitstream.header`'s; coding a chunk into a record is
`infotok_codec.bitstream.chunk_coding`'s. The reader trusts nothing: every length, count, offset
and dimension is checked against the format's limits and against the file size before anything
is allocated, and every fault raises `FormatError` with a one-line message that names the
section (``header``, ``chunk K``, ``index``, ``footer``) and the field.

Version 4 adds an optional side section between the seek index and the footer, which holds
the audio track (`infotok_codec.bitstream.audio` reads and writes its records); this module only
locates it (`ContainerReader.side_span`) and lets the writer fill it (`ContainerWriter.close`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from infotok_codec.bitstream.header import (
    FOOTER,
    FOOTER_MAGIC,
    HEADER_FIXED,
    INDEX_ENTRY,
    INDEX_ENTRY_V3,
    INDEX_HEAD,
    INDEX_TAG,
    KEY_FLAG,
    MAGIC,
    MAX_HEADER_BODY,
    MIN_FILE,
    PREAMBLE,
    READ_VERSIONS,
    RECORD_OVERHEAD,
    U32,
    VERSION,
    ChunkRecord,
    Header,
    check_crc,
    check_range,
    check_record,
    crc,
    decode_header,
    decode_record,
    encode_header,
    encode_record,
    strip_crc,
)
from infotok_codec.closing import Closing
from infotok_codec.errors import FormatError, InfotokError
from infotok_codec.outputs import WholeOrNothing, make_temp


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
            self._file.write(encode_header(header))
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
        check_record(self.header, rec, len(self._entries))
        for name, value in (("mask", rec.mask), ("tokens", rec.tokens)):
            if len(value) > 2**32 - 1:
                raise FormatError(f"chunk {rec.index}: {name} length {len(value)} exceeds u32")
        offset = file.tell()
        file.write(encode_record(rec))
        flags = KEY_FLAG if self.header.is_key(rec.index) else 0
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
            entries = np.array(self._entries, dtype=INDEX_ENTRY)
            index = INDEX_HEAD.pack(INDEX_TAG, len(entries)) + entries.tobytes()
            file.write(index + U32.pack(crc(index)))
            if side is not None:
                side(file)
            file.write(FOOTER.pack(index_offset, len(entries), FOOTER_MAGIC))
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
        if self.file_size < MIN_FILE:
            raise FormatError(
                f"file: {self.file_size} bytes is too short for an .itok file (at least {MIN_FILE})"
            )
        preamble = self._read_at(0, PREAMBLE.size, "header")
        magic, version, length = PREAMBLE.unpack(preamble)
        if magic != MAGIC:
            raise FormatError(f"header: magic {magic!r} is not {MAGIC!r}")
        if version not in READ_VERSIONS:
            raise FormatError(
                f"header: unsupported version {version} (this reader reads versions "
                f"{', '.join(map(str, READ_VERSIONS))})"
            )
        self.version: int = version
        check_range("header", "length", length, HEADER_FIXED.size, MAX_HEADER_BODY)
        self._header_end = PREAMBLE.size + length + U32.size
        if self._header_end > self.file_size:
            raise FormatError(f"header: length {length} runs past end of file")
        body_and_crc = self._read_at(PREAMBLE.size, length + U32.size, "header")
        (stored,) = U32.unpack(body_and_crc[length:])
        check_crc(preamble + body_and_crc[:length], stored, "header")
        return decode_header(body_and_crc[:length], version)

    def _read_index(self) -> tuple[list[int], list[int]]:
        """Footer, then index; returns each chunk's offset and extent in bytes."""
        if self.file_size < self._header_end + FOOTER.size:
            raise FormatError(
                f"footer: missing, the file ends {self.file_size - self._header_end}"
                " bytes after the header (truncated)"
            )
        index_offset, count, magic = FOOTER.unpack(
            self._read_at(self.file_size - FOOTER.size, FOOTER.size, "footer")
        )
        if magic != FOOTER_MAGIC:
            raise FormatError(
                f"footer: magic {magic!r} is not {FOOTER_MAGIC!r} (file truncated "
                "or not an .itok file)"
            )
        expected = self.header.chunk_count
        if count != expected:
            raise FormatError(f"footer: chunk count {count}, header frames need {expected}")
        entry = INDEX_ENTRY if self.version >= 4 else INDEX_ENTRY_V3
        index_size = INDEX_HEAD.size + count * entry.itemsize + U32.size
        last_start = self.file_size - FOOTER.size - index_size
        # Version 4 may hold a side section between the index and the footer; version 3 none.
        if index_offset > last_start or (self.version == 3 and index_offset != last_start):
            raise FormatError(
                f"footer: index offset {index_offset} outside the file (an index "
                f"of {count} chunks must start {'at' if self.version == 3 else 'by'} "
                f"{last_start})"
            )
        self.side_span: tuple[int, int] = (index_offset + index_size, last_start - index_offset)
        """``(offset, length)`` of the side section; length 0 when the file has none."""
        if index_offset < self._header_end + count * RECORD_OVERHEAD:
            raise FormatError(
                f"footer: index offset {index_offset} leaves no room for {count} chunks"
            )
        data = self._read_at(index_offset, index_size, "index")
        strip_crc(data, "index")
        tag, stored_count = INDEX_HEAD.unpack(data[: INDEX_HEAD.size])
        if tag != INDEX_TAG:
            raise FormatError(f"index: tag {tag!r} is not {INDEX_TAG!r}")
        if stored_count != count:
            raise FormatError(f"index: count {stored_count} is not the footer's {count}")
        entries = np.frombuffer(data, dtype=entry, count=count, offset=INDEX_HEAD.size)
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
        short = np.flatnonzero(ends - offsets < RECORD_OVERHEAD)
        if short.size:
            k = int(short[0])
            raise FormatError(
                f"index: chunk {k} spans {ends[k] - offsets[k]} bytes (offset {offsets[k]} to "
                f"{ends[k]}), less than a record's {RECORD_OVERHEAD}"
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
            wrong = np.flatnonzero(entries["flags"] != np.where(keys, KEY_FLAG, 0))
            if wrong.size:
                k = int(wrong[0])
                raise FormatError(
                    f"index: chunk {k} has flags {int(entries['flags'][k])}, key interval "
                    f"{self.header.key_interval} makes it {'a key' if keys[k] else 'a non-key'}"
                    f" chunk (flags {KEY_FLAG if keys[k] else 0})"
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
        rec = decode_record(self._read_at(self._offsets[k], self._spans[k], f"chunk {k}"), k)
        check_record(self.header, rec, k)
        return rec

    def chunks(self) -> Iterator[ChunkRecord]:
        """Every chunk in order."""
        for k in range(len(self)):
            yield self.chunk(k)
