"""Where the tokenizer's networks run: PyTorch (the default) or OpenVINO's compiled graphs.

OpenVINO (`pip install "infotok-codec[openvino]"`) compiles the three heavy parts, the conv
encoder, the compressor and the decoding half (de-compressor + conv decoder), into graphs that run
whole, with fused layouts and oneDNN's AMX/AVX512 kernels. On a 2-core AVX512-BF16/AMX CPU at a
512×512×16 tile it ran the conv encoder 2.0× and the decoding half 1.6× as fast as PyTorch in
bf16 (`benchmarks/speed_large.py --runtime`). What stays in PyTorch is cheap and exact where it
must be: the projections to and from codes and FSQ (codes are rounded in float32, as
`Tokenizer.codes_from_features` does), the masks' embeddings, the crop and the clamp.

A graph is traced for one input shape (the codec's tiles have few: at 1080p four tile sizes and
the last chunk's frame count) and saved, as OpenVINO IR, under the user's cache folder
(`$XDG_CACHE_HOME/infotok/openvino`, keyed by the model file's hash, the shape and the OpenVINO
version), so a shape is traced once per machine and later processes only load it; OpenVINO keeps
its compiled blobs there too. Streams are the same format whichever runtime wrote them: the
indices are integers, so any runtime decodes any stream; the runtimes' float arithmetic differs
slightly, so an encode may pick a few other indices near level boundaries, and a decode's pixels
differ by about a level (tests measure both).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from infotok_codec.errors import InfotokError
from infotok_codec.model import autoencoder
from infotok_codec.model.precision import float32
from infotok_codec.model.tokenizer import Tokenizer, pad_video, pooled_error

RUNTIMES = ("torch", "openvino")


def check_runtime(name: str) -> None:
    """Refuse an unknown runtime, or OpenVINO where its package is not installed (one line)."""
    if name not in RUNTIMES:
        raise InfotokError(f"unknown runtime {name!r}: use {' or '.join(RUNTIMES)}")
    if name == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise InfotokError(
                "--runtime openvino needs the openvino package "
                '(pip install "infotok-codec[openvino]")'
            ) from None


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "infotok" / "openvino"


class _Decoding(nn.Module):
    """The decoding half as one graph: de-compressor input → padded video."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.decompressor, self.decoder = tokenizer.decompressor, tokenizer.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decompressor(x))


class OpenVinoTokenizer:
    """The `Tokenizer` API the codec uses (`features`, `encode`, `encode_features`, `decode`,
    `error_map`), its heavy parts run by OpenVINO. `model_sha256` keys the cached graphs."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        model_sha256: bytes,
        bf16: bool,
        threads: int | None = None,
        cache: Path | None = None,
    ) -> None:
        check_runtime("openvino")
        import openvino

        self.tokenizer = tokenizer.cpu().eval()
        self.fsq = tokenizer.fsq
        self._ov = openvino
        self._core = openvino.Core()
        self._key = f"{model_sha256.hex()[:16]}-{openvino.get_version().split('-')[0]}"
        self._cache = cache or cache_folder()
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._parts: dict[str, nn.Module] = {
            "encoder": tokenizer.encoder,
            "compressor": tokenizer.compressor,
            "decoding": _Decoding(tokenizer),
        }
        self._compiled: dict[tuple[str, tuple[int, ...]], Callable[[np.ndarray], np.ndarray]] = {}

    # -- the graphs ------------------------------------------------------------------------
    def _run(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """`part` on `x` (float32 on the CPU); the graph for this shape is built on first use."""
        shape = tuple(x.shape)
        run = self._compiled.get((part, shape))
        if run is None:
            run = self._compiled[(part, shape)] = self._compile(part, x)
        return torch.from_numpy(run(x.detach().float().contiguous().numpy()))

    def _compile(self, part: str, example: torch.Tensor) -> Callable[[np.ndarray], np.ndarray]:
        ov = self._ov
        name = f"{self._key}-{part}-{'x'.join(map(str, example.shape))}.xml"
        path = self._cache / name
        config = dict(self._config)
        try:
            self._cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(self._cache / "compiled")
        except OSError:
            path = None  # no cache folder: trace in every process
        if path is not None and path.is_file():
            model = self._core.read_model(str(path))
        else:
            model = self._trace(part, example)
            if path is not None:
                _save_ir(ov, model, path)
        compiled = self._core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            # The request's output buffer is reused by its next call: the caller gets a copy.
            return np.array(request.infer([x])[0], copy=True)

        return run

    def _trace(self, part: str, example: torch.Tensor) -> Any:
        """The part as an OpenVINO model for `example`'s shape: traced in float32 (outside any
        autocast: OpenVINO applies the precision), on the batched conv path."""
        x = example.float()
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(float32(x.device))
            stack.enter_context(_batched_convs())
            stack.enter_context(warnings.catch_warnings())
            # Shapes are fixed per graph on purpose, which is what the tracer warns about.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(self._parts[part], (x,), check_trace=False)
            try:
                return self._ov.convert_model(traced, example_input=(x,))
            except Exception as exc:  # OpenVINO's conversion errors share no base class
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InfotokError(f"openvino could not convert the {part}: {first}") from None

    # -- the Tokenizer API -------------------------------------------------------------------
    def features(self, video: torch.Tensor) -> torch.Tensor:
        return self._run("encoder", pad_video(video.float()))

    def encode(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_features(self.features(video), keep)

    @torch.no_grad()
    def encode_features(
        self, features: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        tok = self.tokenizer
        features = features.float()
        if keep is not None:
            dropped = (~keep).unsqueeze(1).to(features.dtype)
            features = features + dropped * tok.will_drop[:, None, None, None]
        compressed = self._run("compressor", features).permute(0, 2, 3, 4, 1)
        with float32(compressed.device):
            return self.fsq.codes_to_indices(self.fsq(tok.to_code(compressed)))

    @torch.no_grad()
    def decode(
        self, indices: torch.Tensor, keep: torch.Tensor | None, size: tuple[int, int, int]
    ) -> torch.Tensor:
        return self._decoded(indices, keep, size).clamp_(-1, 1)

    @torch.no_grad()
    def error_map(self, video: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.features(video) if features is None else features
        recon = self._decoded(self.encode_features(feats), None, tuple(video.shape[2:]))
        return pooled_error(video.float(), recon)

    def _decoded(
        self, indices: torch.Tensor, keep: torch.Tensor | None, size: tuple[int, ...]
    ) -> torch.Tensor:
        """`Tokenizer.decode_codes` of the indices' codes (dropped positions by the mask)."""
        tok = self.tokenizer
        codes = self.fsq.indices_to_codes(indices)
        with float32(codes.device):
            x = tok.from_code(codes)
            if keep is not None:
                x = torch.where(keep.unsqueeze(-1), x, tok.dropped)
        y = self._run("decoding", x.permute(0, 4, 1, 2, 3))
        t, h, w = size
        return y[:, :, :t, :h, :w]


@contextmanager
def _batched_convs() -> Iterator[None]:
    """While tracing, the conv stacks take their batched path: a graph runtime plans the whole
    activation's memory itself, and a frame loop would be unrolled into the graph."""
    saved = autoencoder.BY_FRAME_ABOVE
    autoencoder.BY_FRAME_ABOVE = 1 << 62
    try:
        yield
    finally:
        autoencoder.BY_FRAME_ABOVE = saved


def _save_ir(ov: Any, model: Any, path: Path) -> None:
    """Save IR (.xml and .bin) whole or not at all: written beside, then renamed, .bin first,
    since the .xml's presence says the pair is there."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
