"""Media files through PyAV: video read into frames (`video_reader`), frames written out
(`video_writer`), a source's audio packets copied through (`audio`), and ``-`` for pipes
(`pipe`)."""

from infotok_codec.media.audio import AudioMuxer, read_source_audio
from infotok_codec.media.pipe import PIPE, is_pipe, spooled_stdin
from infotok_codec.media.video_reader import (
    VIDEO_SUFFIXES,
    VideoInfo,
    find_videos,
    output_size,
    probe,
    read_clips,
    read_frames,
)
from infotok_codec.media.video_writer import (
    HOLDS_SIDE_STREAMS,
    SideStreams,
    VideoWriter,
    output_kind,
)

__all__ = [
    "HOLDS_SIDE_STREAMS",
    "PIPE",
    "VIDEO_SUFFIXES",
    "AudioMuxer",
    "SideStreams",
    "VideoInfo",
    "VideoWriter",
    "find_videos",
    "is_pipe",
    "output_kind",
    "output_size",
    "probe",
    "read_clips",
    "read_frames",
    "read_source_audio",
    "spooled_stdin",
]
