"""Audio in and out through PyAV: a source's audio packets copied out, and muxed back in.

`read_source_audio` demuxes every audio stream of a source (no decoding) into `AudioTrack`
parameters and `AudioPacket` lists timed from the video's first frame. `AudioMuxer` puts them
beside the video in a `VideoWriter`'s container: copied as they are when the output format can
hold the codec, else decoded and re-encoded to AAC (and `notes` says so).
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
from av.audio.codeccontext import AudioCodecContext

from infotok_codec.bitstream.audio import MAX_TRACKS, AudioPacket, AudioTrack
from infotok_codec.errors import VideoError

TRANSCODE_CODEC = "aac"
_AAC_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000})


def read_source_audio(
    path: str | os.PathLike[str],
) -> tuple[list[AudioTrack], list[list[AudioPacket]]]:
    """The audio streams of a video file (none for image folders), at most `MAX_TRACKS`.

    Packet times are relative to the first video frame (the video stream's start time), so the
    offset between audio and video is the source's. Streams FFmpeg cannot describe (no codec
    context, no channels) are skipped.

    Raises:
        VideoError: the file cannot be opened or its packets cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        return [], []
    try:
        container = av.open(str(path), metadata_errors="replace")
    except (av.FFmpegError, OSError) as err:
        raise VideoError(f"{path}: not a readable video ({err})") from None
    with container:
        video = container.streams.video[0] if container.streams.video else None
        start = Fraction(0)
        if video is not None and video.start_time is not None and video.time_base:
            start = video.start_time * video.time_base
        streams, tracks = [], []
        for stream in container.streams.audio:
            ctx = stream.codec_context
            if ctx is None or not ctx.sample_rate or not ctx.layout.nb_channels:
                continue
            tracks.append(
                AudioTrack(
                    codec=ctx.codec.canonical_name,
                    sample_rate=ctx.sample_rate,
                    channels=ctx.layout.nb_channels,
                    layout=ctx.layout.name if ctx.layout.name.isascii() else "",
                    time_base=stream.time_base or Fraction(1, ctx.sample_rate),
                    bit_rate=ctx.bit_rate or 0,
                    extradata=ctx.extradata or b"",
                )
            )
            streams.append(stream)
            if len(streams) == MAX_TRACKS:
                break
        packets: list[list[AudioPacket]] = [[] for _ in streams]
        if not streams:
            return [], []
        shifts = [round(start / t.time_base) for t in tracks]
        ends = [0] * len(streams)
        slot = {s.index: i for i, s in enumerate(streams)}
        try:
            for packet in container.demux(streams):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                i = slot[packet.stream.index]
                pts = packet.pts if packet.pts is not None else packet.dts
                # A packet without timestamps follows the previous one.
                pts = ends[i] if pts is None else pts - shifts[i]
                duration = max(packet.duration or 0, 0)
                ends[i] = pts + duration
                packets[i].append(AudioPacket(pts, duration, packet.is_keyframe, bytes(packet)))
        except (av.FFmpegError, OSError) as err:
            raise VideoError(f"{path}: corrupt audio data ({err})") from None
    return tracks, packets


def _layout(track: AudioTrack) -> av.AudioLayout:
    """The track's named layout, else FFmpeg's default one for its channel count ("Nc")."""
    try:
        return av.AudioLayout(track.layout or f"{track.channels}c")
    except (ValueError, av.FFmpegError):
        return av.AudioLayout(f"{track.channels}c")


class _Copy:
    """One track copied packet by packet into an output stream."""

    def __init__(self, container: Any, track: AudioTrack) -> None:
        # PyAV makes a stream from codec parameters only by copying a template stream; an
        # unopened encoder stream in a scratch container is one, and the copy is never opened,
        # so it carries exactly the parameters set here.
        scratch = av.open(io.BytesIO(), "w", format="matroska")
        template = scratch.add_stream(track.codec)
        self.stream = container.add_stream_from_template(template)
        ctx: Any = self.stream.codec_context
        ctx.sample_rate = track.sample_rate
        ctx.layout = _layout(track)
        ctx.bit_rate = track.bit_rate
        ctx.extradata = track.extradata or None
        self.stream.time_base = track.time_base
        self.container, self.track = container, track

    def mux(self, packet: AudioPacket) -> None:
        out = av.Packet(packet.data)
        out.pts = out.dts = packet.pts
        out.duration = packet.duration
        out.time_base = self.track.time_base
        out.is_keyframe = packet.keyframe
        out.stream = self.stream
        self.container.mux(out)

    def finish(self) -> None:
        return


class _Transcode:
    """One track decoded and re-encoded to AAC, for outputs that cannot hold its codec."""

    def __init__(self, container: Any, track: AudioTrack) -> None:
        self.decoder = cast(AudioCodecContext, av.CodecContext.create(track.codec, "r"))
        self.decoder.sample_rate = track.sample_rate
        self.decoder.layout = _layout(track)
        self.decoder.extradata = track.extradata or None
        rate = track.sample_rate if track.sample_rate in _AAC_RATES else 48000
        self.stream = container.add_stream(TRANSCODE_CODEC, rate=rate)
        self.stream.layout = "stereo" if track.channels > 1 else "mono"
        self.container, self.track = container, track
        self.next_sample: int | None = None

    def mux(self, packet: AudioPacket) -> None:
        coded = av.Packet(packet.data)
        coded.pts = coded.dts = packet.pts
        coded.time_base = self.track.time_base
        self._encode(self.decoder.decode(coded))

    def _encode(self, frames: list[Any]) -> None:
        for frame in frames:
            rate = frame.sample_rate
            if self.next_sample is None:
                first = frame.pts * frame.time_base if frame.pts is not None else Fraction(0)
                self.next_sample = round(first * rate)
            # Consecutive samples: the encoder's input clock cannot jump back or skip.
            frame.pts, frame.time_base = self.next_sample, Fraction(1, rate)
            self.next_sample += frame.samples
            for out in self.stream.encode(frame):
                self.container.mux(out)

    def finish(self) -> None:
        self._encode(self.decoder.decode(None))
        for out in self.stream.encode(None):
            self.container.mux(out)


class AudioMuxer:
    """The audio of a decode, muxed beside the video (a `video_writer.SideStreams`).

    Args:
        tracks: the tracks' parameters.
        packets: per track, the packets to write, timed from the output's first frame.

    Attributes:
        notes: one line per track that could not be copied as is (filled by `open`).
    """

    def __init__(self, tracks: tuple[AudioTrack, ...], packets: list[list[AudioPacket]]) -> None:
        self.tracks, self.packets = tracks, packets
        self.notes: list[str] = []
        self._outputs: list[_Copy | _Transcode] = []
        self._next = [0] * len(tracks)

    def open(self, container: Any) -> None:
        """Add one stream per track to ``container`` (before its header is written)."""
        for track in self.tracks:
            try:
                output: _Copy | _Transcode = _Copy(container, track)
            except (ValueError, av.FFmpegError):
                output = _Transcode(container, track)
                self.notes.append(
                    f"{track.codec} audio cannot be stored as is in this output format: "
                    "transcoded to AAC"
                )
            self._outputs.append(output)

    def mux_until(self, seconds: Fraction) -> None:
        """Mux every packet that starts before ``seconds`` (in the output's clock)."""
        for t, (track, output) in enumerate(zip(self.tracks, self._outputs, strict=True)):
            packets = self.packets[t]
            while self._next[t] < len(packets) and packets[self._next[t]].seconds(track) < seconds:
                output.mux(packets[self._next[t]])
                self._next[t] += 1

    def finish(self) -> None:
        """Mux what is left and flush any transcoder."""
        for t, output in enumerate(self._outputs):
            for packet in self.packets[t][self._next[t] :]:
                output.mux(packet)
            self._next[t] = len(self.packets[t])
            output.finish()
