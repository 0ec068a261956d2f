"""The audio side track of an ``.itok`` file (format version 4): its records, written and read.

The source's audio packets are stored as they were coded (no re-encode), in the side section
between the seek index and the footer (`ContainerReader.side_span`). Packets are grouped by the
video chunk their start time falls in: one block record per chunk and track, so a reader that
decodes frames ``[A, B)`` reads only the blocks of the chunks it decodes. Then a directory with
each track's codec parameters and every block's offset, then a fixed-size audio footer that
points at the directory (the file's own layout, in small). docs/FORMAT.md gives every byte.

The reader trusts nothing: every count and length is checked against the section before
anything is allocated, every record has a CRC32, and any fault is a `FormatError` that names
``audio`` and the record (``audio: block 3 (chunk 1, track 1): ...``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import numpy as np

from infotok_codec.bitstream.container import ContainerReader
from infotok_codec.bitstream.header import U16, U32, Cursor, Header, crc, strip_crc
from infotok_codec.errors import FormatError

BLOCK_TAG = b"AUDB"
DIRECTORY_TAG = b"AUDI"
FOOTER_MAGIC = b"IDUA"

MAX_TRACKS = 8
MAX_CODEC_BYTES = 32
MAX_LAYOUT_BYTES = 64
SAMPLE_RATE_RANGE = (1, 1_000_000)
CHANNELS_RANGE = (1, 64)
KEYFRAME = 1
"""Bit 0 of a packet's flags; the other bits are 0."""

_BLOCK_HEAD = struct.Struct("<4sIBI")  # tag, chunk, track, packet count
_PACKET = np.dtype([("pts", "<i8"), ("duration", "<u4"), ("flags", "u1"), ("size", "<u4")])
_DIRECTORY_HEAD = struct.Struct("<4sBI")  # tag, track count, chunk count
_TRACK_FIXED = struct.Struct("<IHIIQ")  # sample rate, channels, time base num/den, bit rate
_FOOTER = struct.Struct("<QI4s")  # directory offset, block count, magic
_BLOCK_OVERHEAD = _BLOCK_HEAD.size + U32.size  # + CRC


def _printable_ascii(text: str, lo: int, hi: int) -> bool:
    return lo <= len(text) <= hi and text.isascii() and text.isprintable()


@dataclass(frozen=True)
class AudioTrack:
    """One audio stream's codec parameters, enough to mux its packets without decoding.

    Attributes:
        codec: FFmpeg's codec name (``aac``, ``mp3``, ``ac3``, ...), 1 to 32 printable ASCII.
        sample_rate: samples per second, in `SAMPLE_RATE_RANGE`.
        channels: in `CHANNELS_RANGE`.
        layout: FFmpeg's channel layout name (``stereo``, ``5.1(side)``), 0 to 64 printable
            ASCII; empty when the source named none.
        time_base: seconds per timestamp tick, numerator and denominator in ``[1, 2**32)``.
        bit_rate: bits per second as the source declared it (0: unknown); informational.
        extradata: the codec's global header (AAC's AudioSpecificConfig, Opus's OpusHead, ...),
            possibly empty.

    Raises:
        FormatError: ``audio: track <field> ...`` for a value outside its range.
    """

    codec: str
    sample_rate: int
    channels: int
    layout: str
    time_base: Fraction
    bit_rate: int
    extradata: bytes

    def __post_init__(self) -> None:
        if not _printable_ascii(self.codec, 1, MAX_CODEC_BYTES):
            raise FormatError(f"audio: track codec {self.codec[:40]!r} is not 1 to 32 ASCII")
        if not _printable_ascii(self.layout, 0, MAX_LAYOUT_BYTES):
            raise FormatError(f"audio: track layout {self.layout[:70]!r} is not 0 to 64 ASCII")
        for name, value, (lo, hi) in (
            ("sample_rate", self.sample_rate, SAMPLE_RATE_RANGE),
            ("channels", self.channels, CHANNELS_RANGE),
            ("time_base numerator", self.time_base.numerator, (1, 2**32 - 1)),
            ("time_base denominator", self.time_base.denominator, (1, 2**32 - 1)),
            ("bit_rate", self.bit_rate, (0, 2**64 - 1)),
        ):
            if not lo <= value <= hi:
                raise FormatError(f"audio: track {name} {value} outside [{lo}, {hi}]")


@dataclass(frozen=True)
class AudioPacket:
    """One coded audio packet.

    Attributes:
        pts: presentation time in the track's time base, relative to the video's first frame
            (negative for audio that starts before it), a signed 64-bit integer.
        duration: in the same ticks, ``[0, 2**32)`` (0: unknown).
        keyframe: the packet decodes on its own (true for most audio codecs).
        data: the coded bytes, at least one.
    """

    pts: int
    duration: int
    keyframe: bool
    data: bytes

    def seconds(self, track: AudioTrack) -> Fraction:
        """Start time in seconds, relative to the video's first frame."""
        return self.pts * track.time_base


def frame_of(seconds: Fraction, fps: Fraction) -> int:
    """The video frame shown at ``seconds`` after the first one (may be < 0 or >= frames)."""
    return math.floor(seconds * fps)


def packets_in_span(
    packets: Iterable[AudioPacket],
    track: AudioTrack,
    fps: Fraction,
    span: tuple[int, int],
    frames: int,
) -> list[AudioPacket]:
    """The packets that go with video frames ``span = [first, stop)`` of a video of `frames`
    frames at `fps`, their times made relative to frame ``first``: those starting in the span,
    plus all audio before the video when ``first == 0`` and all after it when ``stop ==
    frames``. Decoding a range of an `.itok` file and encoding a range of a source cut alike."""
    first, stop = span
    shift = round(Fraction(first) / fps / track.time_base)
    kept = []
    for p in packets:
        frame = frame_of(p.seconds(track), fps)
        if (first == 0 or frame >= first) and (stop == frames or frame < stop):
            kept.append(AudioPacket(p.pts - shift, p.duration, p.keyframe, p.data))
    return kept


def chunk_of(packet: AudioPacket, track: AudioTrack, header: Header) -> int:
    """The chunk whose block holds ``packet``: the one its start time falls in, audio before
    the video going to chunk 0 and audio after it to the last."""
    fps = Fraction(header.fps_num, header.fps_den)
    k = frame_of(packet.seconds(track), fps) // header.chunk_frames
    return min(max(k, 0), header.chunk_count - 1)


# -- writing -----------------------------------------------------------------------------------
def _encode_track(track: AudioTrack) -> bytes:
    out = bytearray(U16.pack(len(track.codec)) + track.codec.encode("ascii"))
    out += _TRACK_FIXED.pack(
        track.sample_rate,
        track.channels,
        track.time_base.numerator,
        track.time_base.denominator,
        track.bit_rate,
    )
    out += U16.pack(len(track.layout)) + track.layout.encode("ascii")
    return bytes(out + U32.pack(len(track.extradata)) + track.extradata)


def _encode_block(k: int, t: int, packets: list[AudioPacket]) -> bytes:
    table = np.array(
        [(p.pts, p.duration, KEYFRAME if p.keyframe else 0, len(p.data)) for p in packets],
        dtype=_PACKET,
    )
    out = (
        _BLOCK_HEAD.pack(BLOCK_TAG, k, t, len(packets))
        + table.tobytes()
        + b"".join(p.data for p in packets)
    )
    return out + U32.pack(crc(out))


def side_writer(
    header: Header, tracks: list[AudioTrack], packets: list[list[AudioPacket]]
) -> Callable[[BinaryIO], None] | None:
    """What `ContainerWriter.close` calls to write the audio section; None for no tracks.

    Args:
        header: the file's header (its chunks group the packets).
        tracks: at most `MAX_TRACKS`.
        packets: per track, its packets (any order; each block keeps them in this order).

    Raises:
        FormatError: too many tracks, or a packet outside the format's ranges.
    """
    if not tracks:
        return None
    if len(tracks) > MAX_TRACKS or len(packets) != len(tracks):
        raise FormatError(
            f"audio: {len(tracks)} tracks, at most {MAX_TRACKS}, one packet list each"
        )
    blocks: list[list[list[AudioPacket]]] = [
        [[] for _ in tracks] for _ in range(header.chunk_count)
    ]
    for t, (track, track_packets) in enumerate(zip(tracks, packets, strict=True)):
        for p in track_packets:
            if not -(2**63) <= p.pts < 2**63 or not 0 <= p.duration < 2**32:
                raise FormatError(f"audio: track {t} packet at {p.pts} outside i64/u32 timing")
            if not 1 <= len(p.data) < 2**32:
                raise FormatError(f"audio: track {t} packet of {len(p.data)} bytes")
            blocks[chunk_of(p, track, header)][t].append(p)

    def write(file: BinaryIO) -> None:
        offsets = []
        for k, per_track in enumerate(blocks):
            for t, block in enumerate(per_track):
                offsets.append(file.tell())
                file.write(_encode_block(k, t, block))
        directory_offset = file.tell()
        directory = (
            _DIRECTORY_HEAD.pack(DIRECTORY_TAG, len(tracks), header.chunk_count)
            + b"".join(_encode_track(track) for track in tracks)
            + np.array(offsets, dtype="<u8").tobytes()
        )
        file.write(directory + U32.pack(crc(directory)))
        file.write(_FOOTER.pack(directory_offset, len(offsets), FOOTER_MAGIC))

    return write


# -- reading -----------------------------------------------------------------------------------
def _decode_track(cur: Cursor) -> AudioTrack:
    codec = cur.text("codec", "ascii")
    rate, channels, tb_num, tb_den, bit_rate = cur.unpack(_TRACK_FIXED, "fixed fields")
    layout = cur.text("layout", "ascii")
    (length,) = cur.unpack(U32, "extradata length")
    extradata = cur.take(length, f"extradata length {length}")
    if tb_num < 1 or tb_den < 1:
        raise FormatError(f"{cur.section}: time_base {tb_num}/{tb_den} is not positive")
    return AudioTrack(codec, rate, channels, layout, Fraction(tb_num, tb_den), bit_rate, extradata)


class AudioReader:
    """The audio track of an open `.itok` file: directory eagerly (validated), blocks on demand.

    Attributes:
        header: the file's header.
        tracks: the tracks' codec parameters; empty when the file has no audio (and always for
            version 3 files).
        bytes: bytes the audio section takes in the file (0 without audio).

    Raises:
        FormatError: ``audio: ...`` for a damaged footer or directory.
    """

    def __init__(self, reader: ContainerReader) -> None:
        self._reader = reader
        self.header = reader.header
        start, length = reader.side_span
        self.bytes = length
        self.tracks: tuple[AudioTrack, ...] = ()
        self._offsets: list[int] = []
        self._spans: list[int] = []
        if length:
            self._read_directory(start, length)

    def _read_directory(self, start: int, length: int) -> None:
        end = start + length
        minimum = _FOOTER.size + _DIRECTORY_HEAD.size + U32.size
        if length < minimum:
            raise FormatError(f"audio: section of {length} bytes, less than its {minimum}")
        offset, count, magic = _FOOTER.unpack(
            self._reader.read_side(end - _FOOTER.size, _FOOTER.size, "audio")
        )
        if magic != FOOTER_MAGIC:
            raise FormatError(f"audio: footer magic {magic!r} is not {FOOTER_MAGIC!r}")
        chunks = self.header.chunk_count
        if not 1 <= count <= MAX_TRACKS * chunks or count % chunks:
            raise FormatError(f"audio: {count} blocks for {chunks} chunks")
        last = end - minimum  # the latest start that leaves room for an empty directory
        if not start + count * _BLOCK_OVERHEAD <= offset <= last:
            raise FormatError(f"audio: directory offset {offset} outside the section")
        where = "audio: directory"
        length = end - _FOOTER.size - offset
        body = strip_crc(self._reader.read_side(offset, length, "audio"), where)
        cur = Cursor(body, where, "record")
        tag, n_tracks, chunk_count = cur.unpack(_DIRECTORY_HEAD, "fixed fields")
        if tag != DIRECTORY_TAG:
            raise FormatError(f"{where}: tag {tag!r} is not {DIRECTORY_TAG!r}")
        if chunk_count != chunks or n_tracks * chunks != count:
            raise FormatError(
                f"{where}: {n_tracks} tracks over {chunk_count} chunks, the file has "
                f"{chunks} chunks and {count} blocks"
            )
        tracks = tuple(_decode_track(cur) for _ in range(n_tracks))
        raw = np.frombuffer(cur.take(8 * count, "block offsets"), dtype="<u8")
        if cur.pos != len(body):
            raise FormatError(f"{where}: {len(body) - cur.pos} trailing bytes")
        if int(raw[0]) != start:
            raise FormatError(f"{where}: block 0 at {int(raw[0])}, not the section start {start}")
        outside = np.flatnonzero(raw >= offset)
        if outside.size:
            raise FormatError(f"{where}: block {int(outside[0])} offset outside the blocks")
        offsets = raw.astype(np.int64)
        spans = np.append(offsets[1:], offset) - offsets
        short = np.flatnonzero(spans < _BLOCK_OVERHEAD)
        if short.size:
            b = int(short[0])
            raise FormatError(f"{where}: block {b} spans {spans[b]} bytes, less than a block's")
        self.tracks, self._offsets, self._spans = tracks, offsets.tolist(), spans.tolist()

    def block(self, k: int, t: int) -> list[AudioPacket]:
        """The packets of track ``t`` whose start lies in chunk ``k`` (see `chunk_of`).

        Raises:
            IndexError: ``k`` or ``t`` out of range.
            FormatError: a damaged block.
        """
        if not (0 <= k < self.header.chunk_count and 0 <= t < len(self.tracks)):
            raise IndexError(f"audio block (chunk {k}, track {t}) out of range")
        b = k * len(self.tracks) + t
        where = f"audio: block {b} (chunk {k}, track {t})"
        body = strip_crc(self._reader.read_side(self._offsets[b], self._spans[b], "audio"), where)
        cur = Cursor(body, where, "record")
        tag, chunk, track, count = cur.unpack(_BLOCK_HEAD, "fixed fields")
        if tag != BLOCK_TAG:
            raise FormatError(f"{where}: tag {tag!r} is not {BLOCK_TAG!r}")
        if (chunk, track) != (k, t):
            raise FormatError(f"{where}: holds chunk {chunk}, track {track}")
        if count * _PACKET.itemsize > len(body) - cur.pos:
            raise FormatError(f"{where}: {count} packets run past end of record")
        table = np.frombuffer(cur.take(count * _PACKET.itemsize, "packets"), dtype=_PACKET)
        sizes = table["size"].astype(np.int64)
        if int(sizes.sum()) != len(body) - cur.pos or (count and int(sizes.min()) < 1):
            raise FormatError(
                f"{where}: packet sizes sum to {int(sizes.sum())}, the record holds "
                f"{len(body) - cur.pos} bytes of data (each packet at least 1)"
            )
        if np.any(table["flags"] & ~np.uint8(KEYFRAME)):
            raise FormatError(f"{where}: packet flags other than bit 0")
        packets, pos = [], cur.pos
        info = self.tracks[t]
        for pts, duration, flags, size in table.tolist():
            packet = AudioPacket(pts, duration, bool(flags & KEYFRAME), body[pos : pos + size])
            if chunk_of(packet, info, self.header) != k:
                raise FormatError(f"{where}: packet at {pts} belongs to another chunk")
            packets.append(packet)
            pos += size
        return packets

    def read_span(self, first: int, stop: int) -> list[list[AudioPacket]]:
        """Per track, the packets that go with video frames ``[first, stop)``, their times
        relative to frame ``first``: those starting in the span, plus all audio before the
        video when ``first == 0`` and all after it when ``stop`` is the frame count."""
        header = self.header
        fps = Fraction(header.fps_num, header.fps_den)
        blocks = range(first // header.chunk_frames, -(-stop // header.chunk_frames))
        return [
            packets_in_span(
                (p for k in blocks for p in self.block(k, t)),
                track,
                fps,
                (first, stop),
                header.frames,
            )
            for t, track in enumerate(self.tracks)
        ]


@dataclass(frozen=True)
class TrackSummary:
    """What `info` shows of a track: its parameters and, over all packets, ``seconds`` from the
    first packet's start to the last one's end and ``bytes`` of packet data."""

    track: AudioTrack
    packets: int
    seconds: float
    bytes: int


def summarize(audio: AudioReader) -> list[TrackSummary]:
    """One `TrackSummary` per track (reads every block)."""
    out = []
    for t, track in enumerate(audio.tracks):
        packets = [p for k in range(audio.header.chunk_count) for p in audio.block(k, t)]
        start = min((p.pts for p in packets), default=0)
        end = max((p.pts + p.duration for p in packets), default=0)
        out.append(
            TrackSummary(
                track,
                len(packets),
                float((end - start) * track.time_base),
                sum(len(p.data) for p in packets),
            )
        )
    return out
