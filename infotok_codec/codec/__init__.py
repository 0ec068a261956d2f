"""The codec: video file ⇄ `.itok` file, and the tokens inside one.

`encode` (`encode_file`, and `Analysis`, its pass 1, which bench and rate control reuse) and
`decode` (`decode_file`, `read_tokens`) are mirrors; `engine` is the tokenizer on a device that
both run, tile by tile.
"""

from infotok_codec.codec.decode import (
    DecodeResult,
    check_model_matches,
    decode_file,
    iter_tokens,
    load_tables,
    read_tokens,
)
from infotok_codec.codec.encode import (
    KEY_SECONDS,
    Analysis,
    CountFeedback,
    EncodeResult,
    encode_file,
    key_interval_chunks,
)
from infotok_codec.codec.engine import (
    ChunkModel,
    Progress,
    as_model,
    check_chunk_frames,
    check_light_head,
    check_refine,
    resolve_device,
    tiles,
)
from infotok_codec.codec.frame_range import split_frame_range

__all__ = [
    "KEY_SECONDS",
    "Analysis",
    "ChunkModel",
    "CountFeedback",
    "DecodeResult",
    "EncodeResult",
    "Progress",
    "as_model",
    "check_chunk_frames",
    "check_light_head",
    "check_model_matches",
    "check_refine",
    "decode_file",
    "encode_file",
    "iter_tokens",
    "key_interval_chunks",
    "load_tables",
    "read_tokens",
    "resolve_device",
    "split_frame_range",
    "tiles",
]
