"""infotok: a video codec built on an adaptive discrete video tokenizer."""

from infotok_codec.errors import FormatError, InfotokError, ModelError, VideoError

__all__ = ["FormatError", "InfotokError", "ModelError", "VideoError"]
__version__ = "0.1.0"
