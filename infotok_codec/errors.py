"""The project's exceptions. The CLI turns any of them into one line and an exit code."""


class InfotokError(Exception):
    """Base of every error infotok raises on purpose (bad input, bad file, bad model)."""


class FormatError(InfotokError):
    """A `.itok` file is damaged or not one: the message names the chunk and the field."""


class VideoError(InfotokError):
    """A video cannot be read or written (no video stream, no frames, unknown format)."""


class ModelError(InfotokError):
    """A model file is missing, damaged, or does not match the code or the stream."""
