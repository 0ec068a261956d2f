"""Decoder files: another decoding half for a model's streams (`decode --fast` ships one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from infotok_codec.errors import ModelError
from infotok_codec.model import load_model, save_decoder_file
from infotok_codec.model.tokenizer import DECODES_KEY

from helpers import DEV, assert_one_line_error, infotok, psnr, read_all


def decoder_file(token_model: Path, path: Path) -> Path:
    """A decoder file for `token_model`'s streams: its network with new decoding weights."""
    model = load_model(token_model).tokenizer
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("encoder.", "compressor.", "to_code.", "will_drop")):
                p.add_(torch.randn_like(p) * 0.05)
    save_decoder_file(model, path, token_model)
    return path


def test_a_decoder_file_reads_its_models_streams(clip, tiny_model: Path, tmp_path: Path) -> None:
    src, stream = clip(frames=16), tmp_path / "s.itok"
    assert infotok("encode", src, stream, "--model", tiny_model, "--budget", "0.6").returncode == 0
    decoder = decoder_file(tiny_model, tmp_path / "decoder.safetensors")
    for name, model in (("full", tiny_model), ("other", decoder)):
        run = infotok(
            "decode", stream, tmp_path / f"{name}.mkv", "--model", model,
            "--tokens", tmp_path / f"{name}.npz",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
    full, other = np.load(tmp_path / "full.npz"), np.load(tmp_path / "other.npz")
    assert sorted(full.files) == sorted(other.files)
    for key in full.files:  # the same tokens, mask and header, read with the same tables
        assert np.array_equal(full[key], other[key]), key
    a, b = read_all(tmp_path / "full.mkv"), read_all(tmp_path / "other.mkv")
    assert a.shape == b.shape == (16, *a.shape[1:])
    assert not np.array_equal(a, b)  # and its own network decoded them


def test_a_decoder_file_refuses_another_models_streams(
    clip, tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    stream = tmp_path / "s.itok"
    assert infotok("encode", clip(frames=8), stream, "--model", other_model).returncode == 0
    decoder = decoder_file(tiny_model, tmp_path / "decoder.safetensors")
    run = infotok("decode", stream, tmp_path / "r.mkv", "--model", decoder)
    assert_one_line_error(run, 1, "written by model tiny-test", "pass the right --model")
    assert not (tmp_path / "r.mkv").exists()


@pytest.mark.parametrize("command", ["encode", "fit-router", "fit-coder"])
def test_a_decoder_file_makes_no_streams_heads_or_tables(
    clip, tiny_model: Path, tmp_path: Path, command: str
) -> None:
    decoder = decoder_file(tiny_model, tmp_path / "decoder.safetensors")
    src, out = clip(frames=8), tmp_path / "out"
    args = {
        "encode": ("encode", src, out, "--model", decoder),
        "fit-router": ("fit-router", decoder, "--data", src.parent, "--out", out),
        "fit-coder": ("fit-coder", decoder, "--data", src.parent, "--out", out),
    }[command]
    run = infotok(*args)
    assert_one_line_error(run, 1, "is a decoder for the streams of model", "encode (or fit)")
    assert not out.exists()


def test_a_decoder_file_keeps_the_token_models_encoding_half(
    tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    model = load_model(other_model).tokenizer  # another encoder: other tokens
    with pytest.raises(ModelError, match="is not the token model's"):
        save_decoder_file(model, tmp_path / "d.safetensors", tiny_model)
    assert not (tmp_path / "d.safetensors").exists()


def test_fast_and_model_are_one_choice(clip, tiny_model: Path, tmp_path: Path) -> None:
    stream = tmp_path / "s.itok"
    assert infotok("encode", clip(frames=8), stream, "--model", tiny_model).returncode == 0
    run = infotok("decode", stream, tmp_path / "r.mkv", "--fast", "--model", tiny_model)
    assert_one_line_error(run, 2, "--fast", "--model")
    assert not (tmp_path / "r.mkv").exists()


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.text(max_size=70), st.binary(min_size=32, max_size=32).map(bytes.hex)))
def test_any_decodes_streams_of_loads_as_a_hash_or_is_refused(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, value: str
) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_model), "pt") as f:
        metadata = {**(f.metadata() or {}), DECODES_KEY: value}
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    save_file(load_file(str(tiny_model)), str(path), metadata=metadata)
    try:
        loaded = load_model(path)
    except ModelError as exc:
        assert DECODES_KEY in str(exc)
        return
    assert loaded.stream_hash == bytes.fromhex(value) and len(value) == 64


@pytest.mark.skipif(not DEV.is_dir(), reason="needs ../shared/data/dev")
def test_the_shipped_fast_decoder_decodes_the_shipped_models_streams(tmp_path: Path) -> None:
    """The packaged decoder belongs to the packaged model (re-shipping one without the other
    fails here), reads a real clip's stream to the same tokens and decodes it near the full
    decoder's quality (MODEL.md: a few tenths of a dB on the dev clips)."""
    from infotok_codec.bench import reference_frames
    from infotok_codec.codec import decode_file, encode_file
    from infotok_codec.media import VideoWriter
    from infotok_codec.model import FAST_DECODER_PATH, read_model_metadata

    fast = load_model(FAST_DECODER_PATH)
    assert fast.stream_hash == read_model_metadata()[1]
    frames = reference_frames(DEV / "vllama_boat.mp4", 16, 128)
    src, stream = tmp_path / "src.mkv", tmp_path / "s.itok"
    with VideoWriter(src, 128, 128, 25) as writer:
        writer.write(frames)
    encode_file(src, stream, budget=0.8)
    quality = {}
    for name, model in (("full", None), ("fast", fast)):
        out = tmp_path / f"{name}.mkv"
        decode_file(stream, out, model=model, tokens_out=tmp_path / f"{name}.npz")
        quality[name] = psnr(read_all(out), frames)
    full, other = np.load(tmp_path / "full.npz"), np.load(tmp_path / "fast.npz")
    assert all(np.array_equal(full[key], other[key]) for key in full.files)
    assert quality["fast"] > quality["full"] - 1.0, quality
    assert quality["fast"] > 20.0, quality
