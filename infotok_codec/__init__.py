"""infotok: a video codec built on an adaptive discrete video tokenizer.

`encode_file`, `decode_file` and `read_tokens` are importable from here; they load lazily, so
`import infotok_codec` (and `infotok --help`) does not pay for importing torch.
"""

from typing import Any

from infotok_codec.errors import FormatError, InfotokError, ModelError, VideoError

__all__ = [
    "FormatError",
    "InfotokError",
    "ModelError",
    "VideoError",
    "decode_file",
    "encode_file",
    "read_tokens",
]
__version__ = "0.1.0"

_CODEC_NAMES = {"encode_file", "decode_file", "read_tokens"}


def __getattr__(name: str) -> Any:
    if name in _CODEC_NAMES:
        from infotok_codec import codec

        return getattr(codec, name)
    raise AttributeError(f"module 'infotok_codec' has no attribute {name!r}")
