"""The `.itok` format and its token coders: container, chunk coders, token files, audio records.

Layout in docs/FORMAT.md. Everything here is integer arithmetic on bytes and numpy arrays (no
torch), so every machine writes and accepts the same bytes.
"""

from infotok_codec.bitstream.audio import (
    AudioPacket,
    AudioReader,
    AudioTrack,
    packets_in_span,
    side_writer,
)
from infotok_codec.bitstream.chunk_coding import decode_chunk, encode_chunk
from infotok_codec.bitstream.container import ContainerReader, ContainerWriter
from infotok_codec.bitstream.context_coder import Chain, fit_key_prior
from infotok_codec.bitstream.context_state import KeyPrior
from infotok_codec.bitstream.entropy import CODERS, check_coder
from infotok_codec.bitstream.header import VERSION, ChunkRecord, Header
from infotok_codec.bitstream.tables import FrequencyTables
from infotok_codec.bitstream.tokens import ChunkTokens, TokenReader, TokenWriter

__all__ = [
    "CODERS",
    "VERSION",
    "AudioPacket",
    "AudioReader",
    "AudioTrack",
    "Chain",
    "ChunkRecord",
    "ChunkTokens",
    "ContainerReader",
    "ContainerWriter",
    "FrequencyTables",
    "Header",
    "KeyPrior",
    "TokenReader",
    "TokenWriter",
    "check_coder",
    "decode_chunk",
    "encode_chunk",
    "fit_key_prior",
    "packets_in_span",
    "side_writer",
]
