"""The tokenizer: conv encoder → compressor → FSQ, and masked decode; its weights file.

Shapes: video `(B, 3, T, H, W)` float in [-1, 1]; indices `(B, T', h, w)` int64 in [0, K) with
T' = ceil(T/4), h = ceil(H/8), w = ceil(W/8); keep-mask `(B, T', h, w)` bool. Any size works:
video is padded by replicating its last frame / row / column and outputs are cropped back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zstandard
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from infotok_codec.errors import ModelError
from infotok_codec.levels import validate_levels
from infotok_codec.model.autoencoder import ConvDecoder, ConvEncoder
from infotok_codec.model.compressor import WindowTransformer
from infotok_codec.model.fsq import FSQ
from infotok_codec.model.light_router import (
    HEAD_KEY,
    HEAD_PREFIX,
    HeadInfo,
    LightRouterHead,
    head_tensors,
    split_head,
)
from infotok_codec.model.precision import float32
from infotok_codec.outputs import atomic_file, check_output

TIME_FACTOR = 4
SPACE_FACTOR = 8
MODEL_FORMAT = "infotok-model-2"
# Format 1 predates the mask-aware encoder; its files load with `will_drop` = 0, which is exactly
# the encoder they were trained as, so streams written with them still decode.
MODEL_FORMATS = (MODEL_FORMAT, "infotok-model-1")
DEFAULT_MODEL_PATH = Path(__file__).parents[1] / "models" / "infotok-s.safetensors.zst"
FAST_DECODER_PATH = DEFAULT_MODEL_PATH.with_name("infotok-s-fast.safetensors.zst")
"""The shipped model's fast decoder (`decode --fast`): a decoder file for its streams."""
DECODES_KEY = "decodes_streams_of"
"""Metadata of a *decoder file*: the sha256 (hex) of the model whose streams it decodes. Its
encoding half and coder tables are that model's, its decoding half its own (a slimmer one), so
it reads that model's tokens and writes none (encoding with it is refused)."""
ENCODING_PARTS = ("encoder", "compressor", "to_code", "will_drop")
"""The tokenizer's attributes that make the codes (the rest decodes them)."""
TOKEN_FIELDS = (
    *("levels", "c1", "c2", "enc_blocks1", "enc_blocks2"),
    *("dim", "enc_depth", "heads", "window", "max_latent_frames"),
)
"""The config fields the codes depend on: a decoder file shares them with its token model."""
PACKED_MAGIC = b"\x28\xb5\x2f\xfd"
"""A packed model file (`pack_model`) is one zstd frame; a safetensors file starts otherwise."""
MAX_MODEL_BYTES = 1 << 31
"""What a packed model file may unpack to, at most (a damaged frame may claim anything)."""


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything that fixes the network's shape; travels inside the weights file."""

    name: str = "infotok-s"
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    c1: int = 96  # channels at T/2 × H/4 × W/4
    c2: int = 256  # channels at T/4 × H/8 × W/8
    enc_blocks1: int = 2
    enc_blocks2: int = 2
    dec_blocks1: int = 3
    dec_blocks2: int = 9  # 3 until run 12 and 6 until run 14 grew the decoder (MODEL.md)
    dim: int = 256  # transformer width
    enc_depth: int = 2
    dec_depth: int = 3
    heads: int = 4
    window: int = 8  # latent positions per window side (64 px)
    max_latent_frames: int = 16

    def __post_init__(self) -> None:
        """Refuse a shape the network cannot be built with (a clear error, not a torch one)."""
        try:
            validate_levels(self.levels)
        except ValueError as exc:
            raise ModelError(f"model config: {exc}") from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "levels"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"model config: {f.name} {value!r} is not a positive integer")
        for name in ("c1", "c2"):  # the conv blocks normalise in 8 groups
            if getattr(self, name) % 8:
                raise ModelError(f"model config: {name} {getattr(self, name)} not a multiple of 8")
        if self.dim % self.heads:
            raise ModelError(f"model config: dim {self.dim} not a multiple of {self.heads} heads")

    @classmethod
    def from_json(cls, text: str) -> TokenizerConfig:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ModelError(f"model config fields {sorted(data)} do not match {sorted(names)}")
        data["levels"] = tuple(data["levels"])
        return cls(**data)

    @classmethod
    def override(cls, changes: dict[str, Any]) -> TokenizerConfig:
        """The defaults with `changes` applied; unknown fields are refused."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        if "levels" in changes:
            changes = {**changes, "levels": tuple(changes["levels"])}
        return dataclasses.replace(cls(), **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def pad_video(video: torch.Tensor) -> torch.Tensor:
    """Replicate-pad `(B, 3, T, H, W)` so T % 4 == 0 and H, W % 8 == 0."""
    _, _, t, h, w = video.shape
    pt, ph, pw = -t % TIME_FACTOR, -h % SPACE_FACTOR, -w % SPACE_FACTOR
    if not (pt or ph or pw):
        return video
    return F.pad(video, (0, pw, 0, ph, 0, pt), mode="replicate")


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T', h, w) of the latent grid for a clip of this size."""
    return (
        math.ceil(frames / TIME_FACTOR),
        math.ceil(height / SPACE_FACTOR),
        math.ceil(width / SPACE_FACTOR),
    )


class Tokenizer(nn.Module):
    """A small InfoTok: `encode` (full rate, or knowing the keep-mask), `decode` with a keep-mask,
    `error_map` for routing."""

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or TokenizerConfig()
        self.fsq = FSQ(cfg.levels)
        self.encoder = ConvEncoder(cfg.c1, cfg.c2, cfg.enc_blocks1, cfg.enc_blocks2, cfg.dim)
        # The compressor is told which positions the router will drop (a learned embedding added
        # there), so it can move what they hold into kept neighbours of the same window: the
        # kept tokens of a masked encode are not the full-rate tokens at those positions.
        self.will_drop = nn.Parameter(torch.zeros(cfg.dim))
        self.compressor = WindowTransformer(
            cfg.dim, cfg.enc_depth, cfg.heads, cfg.window, cfg.max_latent_frames
        )
        self.to_code = nn.Linear(cfg.dim, self.fsq.dim)
        self.from_code = nn.Linear(self.fsq.dim, cfg.dim)
        # The decoder is told which positions were dropped (the mask is in the stream anyway), so
        # a dropped position gets a learned embedding rather than the bare all-zero code.
        self.dropped = nn.Parameter(torch.zeros(cfg.dim))
        self.decompressor = WindowTransformer(
            cfg.dim, cfg.dec_depth, cfg.heads, cfg.window, cfg.max_latent_frames
        )
        self.decoder = ConvDecoder(cfg.c1, cfg.c2, cfg.dec_blocks1, cfg.dec_blocks2, cfg.dim)

    def encoding_parameters(self) -> list[nn.Parameter]:
        """The parameters the codes depend on: encoder, compressor, "will drop", projection to
        codes (`ENCODING_PARTS`). Freezing them keeps every token (and what the coder tables
        were fitted on) as it is while the decoding half trains."""
        return [p for name, p in self.named_parameters() if name.split(".")[0] in ENCODING_PARTS]

    # -- the two halves ----------------------------------------------------------------------
    def quantized_codes(
        self, video: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`(B, 3, T, H, W)` → FSQ codes `(B, T', h, w, D)` (straight-through gradient).

        With `keep`, the compressor knows which positions will be dropped; their codes are still
        returned (callers zero them).
        """
        return self.codes_from_features(self.features(video), keep)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """`(B, 3, T, H, W)` → conv encoder features `(B, dim, T', h, w)` (video padded first)."""
        return self.encoder(pad_video(video))

    def codes_from_features(
        self, features: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Conv features `(B, dim, T', h, w)` → FSQ codes `(B, T', h, w, D)`, as
        `quantized_codes`: the compressor half, for callers that kept the features."""
        return self.fsq(self.code_inputs(features, keep))

    def code_inputs(self, features: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Conv features → the FSQ's input `(B, T', h, w, D)` float32, before bounding and
        rounding (what encoder-side refinement searches over)."""
        if keep is not None:
            dropped = (~keep).unsqueeze(1).to(features.dtype)
            features = features + dropped * self.will_drop.to(features.dtype)[:, None, None, None]
        features = self.compressor(features).permute(0, 2, 3, 4, 1)
        # Projected in float32 even under autocast: bf16 holds 8 significant bits, so rounding
        # its projection to the FSQ grid would move codes that sit near a level boundary.
        with float32(features.device):
            return self.to_code(features.float())

    def decode_codes(
        self,
        codes: torch.Tensor,
        keep: torch.Tensor | None,
        size: tuple[int, int, int],
        recompute: bool = False,
    ) -> torch.Tensor:
        """FSQ codes `(B, T', h, w, D)` + keep-mask → video `(B, 3, T, H, W)` cropped to `size`.
        `recompute`: under autograd, hold each block's input only and recompute the rest in
        the backward pass (less memory, one more forward pass)."""
        x = self.from_code(codes)
        if keep is not None:
            x = torch.where(keep.unsqueeze(-1), x, self.dropped.to(x.dtype))
        y = self.decompressor(x.permute(0, 4, 1, 2, 3), recompute)
        y = self.decoder(y, recompute)
        t, h, w = size
        return y[:, :, :t, :h, :w]

    def forward(
        self, video: torch.Tensor, keep: torch.Tensor | None = None, encoder_grad: bool = True
    ) -> torch.Tensor:
        """Training path: reconstruct `video` keeping only `keep` positions (all when None).
        `encoder_grad=False` runs the half that makes the codes without autograd (training the
        decoding half alone)."""
        with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
            codes = self.quantized_codes(video, keep)
        if keep is not None:
            codes = codes * keep.unsqueeze(-1).to(codes.dtype)
        return self.decode_codes(codes, keep, tuple(video.shape[2:]))  # type: ignore[arg-type]

    # -- the codec's API ---------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, 3, T, H, W)` in [-1, 1] → indices `(B, T', h, w)` int64, at full rate or for the
        positions `keep` will keep (indices at dropped positions are meaningless)."""
        return self.fsq.codes_to_indices(self.quantized_codes(video, keep))

    @torch.no_grad()
    def encode_features(
        self, features: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`encode` from conv features `(B, dim, T', h, w)` → indices `(B, T', h, w)`."""
        return self.fsq.codes_to_indices(self.codes_from_features(features, keep))

    @torch.no_grad()
    def decode(
        self, indices: torch.Tensor, keep: torch.Tensor | None, size: tuple[int, int, int]
    ) -> torch.Tensor:
        """Indices `(B, T', h, w)` + keep-mask → `(B, 3, *size)` in [-1, 1]; dropped ignored."""
        codes = self.fsq.indices_to_codes(indices)
        if keep is not None:
            codes = codes * keep.unsqueeze(-1).to(codes.dtype)
        return self.decode_codes(codes, keep, size).clamp_(-1, 1)  # in place: a whole copy less

    @torch.no_grad()
    def error_map(self, video: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The router's ELBO proxy `(B, T', h, w)` float: |x − D(E(x))| at full rate, averaged
        over each position's 3×4×8×8 cell; −log p(x) up to an affine map under a Laplace
        likelihood and a uniform prior on codes. `features` (`features(video)`) saves the conv
        encoder when the caller has them."""
        codes = self.codes_from_features(self.features(video) if features is None else features)
        recon = self.decode_codes(codes, None, tuple(video.shape[2:]))  # type: ignore[arg-type]
        return pooled_error(video, recon)


def pooled_error(video: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """|video − recon| `(B, 3, T, H, W)` averaged per latent cell → `(B, T', h, w)`."""
    err = pad_video((video - recon).abs().mean(dim=1, keepdim=True))
    pooled = F.avg_pool3d(err, (TIME_FACTOR, SPACE_FACTOR, SPACE_FACTOR))
    return pooled[:, 0]


# -- the weights file ------------------------------------------------------------------------
def save_model(
    model: Tokenizer,
    path: str | Path,
    *,
    tables_json: str,
    extra: dict[str, Any] | None = None,
    light_head: tuple[LightRouterHead, HeadInfo] | None = None,
) -> None:
    """One safetensors file: fp16 weights, metadata with config, coder tables and the recipe,
    and the `light` router's head when given."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": MODEL_FORMAT,
        "config": model.config.to_json(),
        "entropy_tables": tables_json,
    }
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if light_head is not None:
        tensors.update(head_tensors(light_head[0]))
        metadata[HEAD_KEY] = light_head[1].to_json()
    write_safetensors(path, tensors, metadata)


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """A safetensors file written whole or not at all, the same bytes for the same tensors and
    metadata. The library writes the metadata in a random order (a Rust hash map), so the same
    model saved twice had two sha256s, and streams name their model by its file's sha256; here
    the header's metadata is put in key order, which leaves its length as it was."""
    data = save(tensors, metadata=metadata)
    start = _weights_offset(data)
    header = json.loads(data[8:start])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads its header to 8 bytes with spaces
    with atomic_file(path) as tmp:
        tmp.write_bytes(struct.pack("<Q", len(text)) + text + data[start:])


def save_decoder_file(
    model: Tokenizer,
    path: str | Path,
    token_model: str | Path | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `model` as a decoder file (`DECODES_KEY`) for the streams of `token_model` (the
    shipped model when None): its own decoding half, the token model's coder tables. Its
    encoding half must be the token model's, tensor for tensor and in every config field the
    tokens depend on (as `--decoder-only` training keeps it), or it would not read that
    model's tokens."""
    token = load_model(token_model)  # its weights as the codec runs them (format 1 included)
    if DECODES_KEY in token.metadata:
        raise ModelError("the token model is itself a decoder file: give the model it reads")
    for field in TOKEN_FIELDS:  # these fix the encoding half's tensors, names and shapes
        if getattr(model.config, field) != getattr(token.tokenizer.config, field):
            raise ModelError(f"config {field} is not the token model's: the tokens would differ")
    ours, theirs = model.state_dict(), token.tokenizer.state_dict()
    for name in sorted(n for n in theirs if n.split(".")[0] in ENCODING_PARTS):
        if not torch.equal(ours[name].half(), theirs[name].half()):  # as the file holds them
            raise ModelError(f"{name} is not the token model's: the tokens would differ")
    extra = {**(extra or {}), DECODES_KEY: token.sha256.hex()}
    save_model(model, path, tables_json=token.tables_json, extra=extra)


def replace_light_head(
    src: str | Path,
    dst: str | Path,
    head: LightRouterHead,
    info: HeadInfo,
    *,
    force: bool = False,
) -> None:
    """Write `src`'s model file to `dst` with `head` as its `light` router head: the network's
    tensors and every other metadata entry are copied byte for byte (any old head is replaced).
    `dst` may be `src` only with `force`."""
    _rewrite_model_file(
        src, dst, head_tensors(head), {HEAD_KEY: info.to_json()}, force, drop_prefix=HEAD_PREFIX
    )


def replace_tables(
    src: str | Path, dst: str | Path, tables_json: str, *, force: bool = False
) -> None:
    """Write `src`'s model file to `dst` with `tables_json` as its coder tables; every tensor and
    every other metadata entry is copied byte for byte. `dst` may be `src` only with `force`."""
    _rewrite_model_file(src, dst, {}, {"entropy_tables": tables_json}, force)


def _rewrite_model_file(
    src: str | Path,
    dst: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    force: bool,
    drop_prefix: str | None = None,
) -> None:
    """`src`'s tensors (less those under `drop_prefix`) and metadata, updated with `tensors`
    and `metadata`, written to `dst` whole or not at all."""
    src, dst = Path(src), Path(dst)
    check_output(dst, force)
    old, old_metadata, _ = read_model_file(src)
    if DECODES_KEY in old_metadata:  # its tables and head are its token model's, as they are
        raise ModelError(f"{src}: a decoder file keeps its token model's tables and head")
    kept = {k: v for k, v in old.items() if drop_prefix is None or not k.startswith(drop_prefix)}
    write_safetensors(dst, {**kept, **tensors}, {**old_metadata, **metadata})


@dataclass
class LoadedModel:
    """A tokenizer ready to run, with what the stream needs from its file."""

    tokenizer: Tokenizer
    tables_json: str
    sha256: bytes  # of the whole file: weights and tables together decide the decoded video
    metadata: dict[str, str]
    light_head: LightRouterHead | None = None  # the `light` router's head, if the file has one

    @property
    def name(self) -> str:
        return self.tokenizer.config.name

    @property
    def stream_hash(self) -> bytes:
        """The model hash that the streams this model reads name: its own, or for a decoder
        file the hash of the model it decodes for."""
        return stream_hash(self.metadata, self.sha256)

    def check_encodes(self) -> None:
        """Refuse a decoder file where a stream, a light head or coder tables would be made:
        its tokens are another model's, and so are the streams they belong in."""
        if DECODES_KEY in self.metadata:
            raise ModelError(
                f"model {self.name} is a decoder for the streams of model "
                f"{self.metadata[DECODES_KEY][:12]}: encode (or fit) with that model"
            )


def stream_hash(metadata: dict[str, str], sha256: bytes) -> bytes:
    """`LoadedModel.stream_hash` from a model file's metadata and sha256."""
    text = metadata.get(DECODES_KEY)
    return sha256 if text is None else bytes.fromhex(text)


def read_model_metadata(path: str | Path | None = None) -> tuple[dict[str, str], bytes]:
    """A model file's metadata and sha256, without building the network (for token tools)."""
    _, metadata, sha256 = _read_model(path, tensors=False)
    return metadata, sha256


def read_model_file(
    path: str | Path | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    """A model file's tensors, metadata and sha256, as stored (no network is built)."""
    return _read_model(path, tensors=True)


def _read_model(
    path: str | Path | None, tensors: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    """Plain safetensors or packed (`pack_model`) alike. The sha256 is of the safetensors
    bytes, so a model keeps its identity (and the streams that name it) packed or not."""
    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    return _parse_model(path, _safetensors_bytes(path), tensors)


def _parse_model(
    path: Path, data: bytes, tensors: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    """`_read_model` of the safetensors bytes `data` read from `path`."""
    try:
        header = json.loads(data[8 : _weights_offset(data)])
        metadata = dict(header.get("__metadata__") or {})
        weights = load(data) if tensors else {}
    except (SafetensorError, struct.error, ValueError, AttributeError, TypeError) as exc:
        raise ModelError(f"{path}: not a safetensors model ({exc})") from None
    if metadata.get("format") not in MODEL_FORMATS:
        raise ModelError(
            f"{path}: format {metadata.get('format')!r} is not one of {', '.join(MODEL_FORMATS)}"
        )
    value = metadata.get(DECODES_KEY, "0" * 64)
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ModelError(f"{path}: {DECODES_KEY} is not a sha256 in lowercase hex")
    return weights, metadata, hashlib.sha256(data).digest()


def _safetensors_bytes(path: Path) -> bytes:
    """The file's bytes, unpacked when it is a packed model."""
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    if data[:4] != PACKED_MAGIC:
        return data
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            packed = reader.read(MAX_MODEL_BYTES + 1)
    except zstandard.ZstdError as exc:
        raise ModelError(f"{path}: damaged packed model ({exc})") from None
    if len(packed) > MAX_MODEL_BYTES or len(packed) < 8:
        raise ModelError(f"{path}: damaged packed model ({len(packed)} bytes unpacked)")
    start = _weights_offset(packed)
    if start > len(packed) or (len(packed) - start) % 2:
        raise ModelError(f"{path}: damaged packed model (its planes do not fit)")
    body = np.frombuffer(packed, dtype=np.uint8, offset=start)
    planes = np.empty_like(body)
    planes[0::2], planes[1::2] = np.split(body, 2)
    return packed[:start] + planes.tobytes()


def _weights_offset(data: bytes) -> int:
    """Where a safetensors file's weights start: after its 8-byte header length and header."""
    (length,) = struct.unpack_from("<Q", data)
    return 8 + length


def pack_model(src: str | Path, dst: str | Path, *, force: bool = False) -> None:
    """Write safetensors model `src` packed to `dst`: header as is, the 2-byte weights' low and
    high bytes as two planes, one zstd frame with a checksum. fp16 exponents sit in the high
    bytes, so the planes compress where the interleaved bytes do not: run 14's file 27.98 →
    24.05 MB (zstd alone: 25.69). `load_model` reads either form; the package ships the packed
    one (the repository takes no file of 25 MB or more)."""
    src, dst = Path(src), Path(dst)
    check_output(dst, force)
    data = _safetensors_bytes(src)
    _parse_model(src, data, tensors=False)  # a model file, or a one-line ModelError
    start = _weights_offset(data)
    body = np.frombuffer(data, dtype=np.uint8, offset=start)
    if len(body) % 2:
        raise ModelError(f"{src}: weights of odd byte length cannot be packed")
    packed = data[:start] + body[0::2].tobytes() + body[1::2].tobytes()
    with atomic_file(dst) as tmp:
        tmp.write_bytes(zstandard.ZstdCompressor(level=19, write_checksum=True).compress(packed))


def load_model(path: str | Path | None = None) -> LoadedModel:
    """Load strictly: unknown format, config mismatch, missing or extra tensors → ModelError."""
    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    tensors, metadata, sha256 = read_model_file(path)
    try:
        config = TokenizerConfig.from_json(metadata["config"])
        tokenizer = Tokenizer(config)
        tensors, light_head = split_head(tensors, metadata, config.dim)
        state = {k: v.to(torch.float32) for k, v in tensors.items()}
        if metadata["format"] == "infotok-model-1" and "will_drop" not in state:
            state["will_drop"] = torch.zeros(config.dim)
        tokenizer.load_state_dict(state, strict=True)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: weights do not match the model config ({first})") from None
    tokenizer.eval()
    return LoadedModel(
        tokenizer=tokenizer,
        tables_json=metadata.get("entropy_tables", ""),
        sha256=sha256,
        metadata=metadata,
        light_head=light_head,
    )
