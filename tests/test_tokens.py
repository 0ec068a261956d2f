"""Token files in: `decode tokens.npz` decodes them, `pack` turns them back into the stream, and
every malformed one is a one-line error naming the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from infotok_codec.bitstream import TokenReader
from infotok_codec.bitstream.lattice import lattice_count, spread_order
from infotok_codec.codec import decode_file, encode_file, read_tokens
from infotok_codec.errors import FormatError, InfotokError
from infotok_codec.pack import pack_file
from infotok_codec.rate import RateControl

from helpers import assert_one_line_error, infotok, make_clip, pattern, read_all


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    """An `elbo` stream at budget 0.5 (3 chunks, lattice share 192) and its token file."""
    folder = tmp_path_factory.mktemp("stream")
    src = make_clip(folder / "src.mkv", pattern(20, 48, 64), codec="ffv1")
    itok = folder / "o.itok"
    encode_file(src, itok, budget=0.5, chunk_frames=8, model=tiny_model)
    tokens = folder / "t.npz"
    decode_file(itok, None, tokens_out=tokens, model=tiny_model)
    return itok, tokens


def test_decoding_the_token_file_gives_the_frames_the_stream_gives(
    tmp_path: Path, tiny_model: Path, clip
) -> None:
    src = clip(frames=20, width=64, height=48)
    itok = tmp_path / "o.itok"
    for args in (
        ("encode", src, itok, "--budget", "0.5"),
        ("decode", itok, "--tokens", tmp_path / "t.npz"),
        ("decode", tmp_path / "t.npz", tmp_path / "from_tokens.mkv"),
        ("decode", itok, tmp_path / "from_stream.mkv"),
        ("pack", tmp_path / "t.npz", tmp_path / "packed.itok"),
    ):
        run = infotok(*args, "--model", tiny_model)
        assert run.returncode == 0, run.stderr
    decoded = read_all(tmp_path / "from_tokens.mkv")
    assert len(decoded) == 20
    assert np.array_equal(decoded, read_all(tmp_path / "from_stream.mkv"))
    assert (tmp_path / "packed.itok").read_bytes() == itok.read_bytes()


@pytest.mark.parametrize(
    ("router", "budget", "coder"),
    [
        ("elbo", 0.5, "adaptive"),
        ("fixed", 0.3, "range"),
        ("uniform", 0.6, "zstd"),
        ("elbo", 1.0, "adaptive"),
    ],
)
def test_pack_reproduces_the_encoded_bytes_for_every_router_and_coder(
    clip, tiny_model: Path, tmp_path: Path, router: str, budget: float, coder: str
) -> None:
    src = clip(frames=22, width=40, height=24)
    itok = tmp_path / "o.itok"
    encode_file(
        src, itok, budget=budget, router=router, coder=coder, model=tiny_model, chunk_frames=8
    )
    decode_file(itok, None, tokens_out=tmp_path / "t.npz", model=tiny_model)
    result = pack_file(tmp_path / "t.npz", tmp_path / "p.itok", model=tiny_model)
    assert (tmp_path / "p.itok").read_bytes() == itok.read_bytes()
    assert result.bytes == itok.stat().st_size and result.router == router


def test_pack_reproduces_a_refined_quality_encode_and_old_token_files_read_as_budget(
    clip, tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=14, width=40, height=24)
    itok = tmp_path / "o.itok"
    encode_file(
        src,
        itok,
        rate=RateControl("quality", 21.5),
        refine=2,
        model=tiny_model,
        chunk_frames=8,
        audio=False,
    )
    tokens = tmp_path / "t.npz"
    decode_file(itok, None, tokens_out=tokens, model=tiny_model)
    packed = pack_file(tokens, tmp_path / "p.itok", model=tiny_model)
    assert (tmp_path / "p.itok").read_bytes() == itok.read_bytes()
    assert (packed.rate.mode, packed.refine) == ("quality", 2)
    header = TokenReader(tokens).header
    assert (header.rate_mode, header.rate_target, header.refine) == ("quality", 21.5, 2)
    # A token file written before these keys existed (or by hand without them): mode budget,
    # whose target is the budget, and no refinement.
    arrays = {k: v for k, v in np.load(tokens).items() if k not in ("rate_mode", "rate_target")}
    np.savez(tmp_path / "bare.npz", **{k: v for k, v in arrays.items() if k != "refine"})
    bare = TokenReader(tmp_path / "bare.npz").header
    assert (bare.rate_mode, bare.rate_target, bare.refine) == ("budget", bare.budget, 0)
    np.savez(tmp_path / "odd.npz", **arrays, rate_target=np.array(3.0))
    with pytest.raises(FormatError, match="rate_target: given without rate_mode"):
        TokenReader(tmp_path / "odd.npz")


def test_tokens_a_model_writes_with_numpy_savez_pack_and_decode(
    stream: tuple[Path, Path], tiny_model: Path, tmp_path: Path
) -> None:
    # A generative model's view: take the header keys of a real token file, write new indices
    # (here random, kept where a full-rate mask keeps them) with plain numpy.savez.
    itok, tokens = stream
    arrays = dict(np.load(tokens))
    rng = np.random.default_rng(0)
    arrays["budget"] = np.array(1.0)
    for k in range(3):
        shape = arrays[f"keep_{k}"].shape
        arrays[f"keep_{k}"] = np.ones(shape, dtype=bool)
        arrays[f"indices_{k}"] = rng.integers(0, 64000, shape).astype(np.int32)
    np.savez(tmp_path / "gen.npz", **arrays)
    pack_file(tmp_path / "gen.npz", tmp_path / "gen.itok", model=tiny_model)
    for k, chunk in enumerate(read_tokens(tmp_path / "gen.itok", tiny_model)):
        assert np.array_equal(chunk.indices, arrays[f"indices_{k}"]) and chunk.keep.all()
    decode_file(tmp_path / "gen.npz", tmp_path / "a.mkv", model=tiny_model)
    decode_file(tmp_path / "gen.itok", tmp_path / "b.mkv", model=tiny_model)
    generated = read_all(tmp_path / "a.mkv")
    assert np.array_equal(generated, read_all(tmp_path / "b.mkv"))
    assert not np.array_equal(generated, read_all(_decoded(itok, tiny_model, tmp_path)))


def _decoded(itok: Path, model: Path, folder: Path) -> Path:
    out = folder / "stream.mkv"
    decode_file(itok, out, model=model)
    return out


def test_a_frames_decode_writes_a_token_file_that_decodes_its_span(
    stream: tuple[Path, Path], tiny_model: Path, tmp_path: Path
) -> None:
    itok, _ = stream
    decode_file(itok, None, frames="9:15", tokens_out=tmp_path / "part.npz", model=tiny_model)
    with TokenReader(tmp_path / "part.npz") as reader:
        assert reader.chunk_indices == range(1, 2) and reader.span == (8, 16)
        assert not reader.complete
    decode_file(tmp_path / "part.npz", tmp_path / "part.mkv", frames="10:13", model=tiny_model)
    whole = read_all(_decoded(itok, tiny_model, tmp_path))
    assert np.array_equal(read_all(tmp_path / "part.mkv"), whole[10:13])
    with pytest.raises(InfotokError, match="holds frames 8:16"):
        decode_file(tmp_path / "part.npz", tmp_path / "x.mkv", frames="0:12", model=tiny_model)
    with pytest.raises(InfotokError, match="pack needs every chunk"):
        pack_file(tmp_path / "part.npz", tmp_path / "x.itok", model=tiny_model)
    assert not (tmp_path / "x.mkv").exists() and not (tmp_path / "x.itok").exists()


def test_a_token_file_from_another_model_is_refused(
    stream: tuple[Path, Path], other_model: Path, tmp_path: Path
) -> None:
    _, tokens = stream
    for command in ("decode", "pack"):
        out = tmp_path / ("o.mkv" if command == "decode" else "o.itok")
        run = infotok(command, tokens, out, "--model", other_model)
        assert_one_line_error(run, 1, "decode with the model that wrote it")
        assert not out.exists()


Edit = Callable[[dict[str, np.ndarray]], None]


def _lattice_dropped(a: dict[str, np.ndarray]) -> None:
    keep, indices = a["keep_0"].copy(), a["indices_0"].copy()
    first = np.unravel_index(spread_order(keep.shape)[0], keep.shape)
    assert lattice_count(int(keep.sum()), int(a["lattice_share"])) > 0 and keep[first]
    keep[first], indices[first] = False, -1
    a["keep_0"], a["indices_0"] = keep, indices


def _set(key: str, value: object) -> Edit:
    def edit(a: dict[str, np.ndarray]) -> None:
        a[key] = np.asarray(value)

    return edit


def _drop(*keys: str) -> Edit:
    def edit(a: dict[str, np.ndarray]) -> None:
        for key in keys:
            del a[key]

    return edit


def _at_first_kept(value: int) -> Edit:
    def edit(a: dict[str, np.ndarray]) -> None:
        indices = a["indices_1"].copy()
        indices[tuple(np.argwhere(a["keep_1"])[0])] = value
        a["indices_1"] = indices

    return edit


def _at_first_dropped(a: dict[str, np.ndarray]) -> None:
    indices = a["indices_2"].copy()
    indices[tuple(np.argwhere(~a["keep_2"])[0])] = 7
    a["indices_2"] = indices


def _astype(key: str, dtype: type) -> Edit:
    def edit(a: dict[str, np.ndarray]) -> None:
        a[key] = a[key].astype(dtype)

    return edit


def _narrow(a: dict[str, np.ndarray]) -> None:
    a["indices_1"] = a["indices_1"][:, :-1]


def _extra_chunk(a: dict[str, np.ndarray]) -> None:
    a["indices_3"], a["keep_3"], a["first_frame_3"] = a["indices_2"], a["keep_2"], np.array(24)


NEW_IN_VERSION_1 = ("format", "version", "model_name", "model_hash", "coder", "router")
MALFORMED: dict[str, tuple[Edit, str]] = {
    "float indices": (_astype("indices_0", np.float32), "indices_0: dtype float32"),
    "indices of another shape": (_narrow, "indices_1: shape"),
    "index = K at a kept position": (_at_first_kept(64000), "indices_1: index 64000"),
    "-1 at a kept position": (_at_first_kept(-1), "indices_1: index -1"),
    "a value at a dropped position": (_at_first_dropped, "indices_2: index 7 at dropped"),
    "keep as 0/1 integers": (_astype("keep_0", np.uint8), "keep_0: dtype uint8"),
    "mask without its lattice": (_lattice_dropped, "keep_0: drops lattice position"),
    "a header key missing": (_drop("coder"), "no 'coder' key"),
    "an unknown key": (_set("prompt", "a cat"), "unknown member 'prompt.npy'"),
    "a chunk missing between two": (
        _drop("indices_1", "keep_1", "first_frame_1"),
        "indices_1: missing",
    ),
    "a chunk without its mask": (_drop("keep_2"), "keep_2: missing"),
    "a chunk past the video": (_extra_chunk, "chunk 3 of a video of 3 chunks"),
    "wrong first frame": (_set("first_frame_1", 9), "first_frame_1: chunk 1 covers frames 9+8"),
    "model hash not hex": (_set("model_hash", "beef"), "model_hash: 'beef'"),
    "fps of three numbers": (_set("fps", [25, 1, 1]), "fps: shape (3,)"),
    "budget above 1": (_set("budget", 1.5), "budget 1.5 outside"),
    "width that changes the grid": (_set("width", 72), "indices_0: shape"),
    "another token-file version": (_set("version", 2), "unsupported token-file version 2"),
    "a pickled object array": (
        _set("router", np.array(["elbo", 3], dtype=object)),
        "router: dtype object",
    ),
    "an older token file": (
        _drop(*NEW_IN_VERSION_1, "budget", "lattice_share"),
        "no 'format' key",
    ),
}


def _read_all(path: Path) -> None:
    with TokenReader(path) as reader:
        list(reader.chunks())


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_token_file_is_one_line_and_exit_1(
    stream: tuple[Path, Path], tiny_model: Path, tmp_path: Path, case: str
) -> None:
    _, tokens = stream
    arrays = dict(np.load(tokens))
    edit, needle = MALFORMED[case]
    edit(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        _read_all(bad)
    run = infotok("decode", bad, tmp_path / "o.mkv", "--model", tiny_model)
    assert_one_line_error(run, 1, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_a_file_that_is_not_a_zip_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "t.npz"
    bad.write_text("indices: 1 2 3\n")
    run = infotok("pack", bad, tmp_path / "o.itok", "--model", tiny_model)
    assert_one_line_error(run, 1, "not a zip archive")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]
