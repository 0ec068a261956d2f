"""Decoder files: another decoding half for a model's streams (`decode --fast` ships one)."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from infotok_codec.errors import ModelError
from infotok_codec.model import (
    FAST_DECODER_PATH,
    Tokenizer,
    load_model,
    read_model_metadata,
    replace_tables,
    save_decoder_file,
)
from infotok_codec.model.tokenizer import DECODES_KEY, ENCODING_PARTS

from helpers import DEV, TINY, assert_one_line_error, infotok, psnr, read_all


def decoder_file(token_model: Path, path: Path) -> Path:
    """A decoder file for `token_model`'s streams: its network with new decoding weights."""
    model = load_model(token_model).tokenizer
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[0] not in ENCODING_PARTS:
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
    # Its tables are the token model's: a token file packs back to the very stream.
    packed = tmp_path / "packed.itok"
    run = infotok("pack", tmp_path / "other.npz", packed, "--model", decoder)
    assert run.returncode == 0, run.stderr
    assert packed.read_bytes() == stream.read_bytes()


def test_a_decoder_file_refuses_another_models_streams(
    clip, tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    stream = tmp_path / "s.itok"
    assert infotok("encode", clip(frames=8), stream, "--model", other_model).returncode == 0
    decoder = decoder_file(tiny_model, tmp_path / "decoder.safetensors")
    run = infotok("decode", stream, tmp_path / "r.mkv", "--model", decoder)
    assert_one_line_error(
        run, 1, "written by model tiny-test", "decode with the model that wrote it"
    )
    assert not (tmp_path / "r.mkv").exists()


@pytest.mark.parametrize(
    "command", ["encode", "encode-folder", "bench", "bench-light", "fit-router", "fit-coder"]
)
def test_a_decoder_file_makes_no_streams_heads_or_tables(
    clip, tiny_model: Path, tmp_path: Path, command: str
) -> None:
    decoder = decoder_file(tiny_model, tmp_path / "decoder.safetensors")
    src, out = clip(frames=8), tmp_path / "out"
    args = {
        "encode": ("encode", src, out, "--model", decoder),
        "encode-folder": ("encode", src.parent, out, "--model", decoder),
        "bench": ("bench", src, "--out", out, "--model", decoder, "--codecs", "none"),
        "bench-light": ("bench", src, "--out", out, "--model", decoder, "--routers", "light"),
        "fit-router": ("fit-router", decoder, "--data", src.parent, "--out", out),
        "fit-coder": ("fit-coder", decoder, "--data", src.parent, "--out", out),
    }[command]
    run = infotok(*args)
    assert_one_line_error(run, 1, "is a decoder for the streams of model", "encode (or fit)")
    assert not out.exists()
    with pytest.raises(ModelError, match="keeps its token model's tables"):
        replace_tables(decoder, tmp_path / "t.safetensors", "{}")


def test_a_decoder_file_keeps_the_token_models_encoding_half(
    tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d.safetensors"
    model = load_model(other_model).tokenizer  # another encoder: other tokens
    with pytest.raises(ModelError, match="is not the token model's"):
        save_decoder_file(model, out, tiny_model)
    shallower = Tokenizer(dataclasses.replace(TINY, enc_depth=2))  # one more compressor block
    shallower.load_state_dict(load_model(tiny_model).tokenizer.state_dict(), strict=False)
    with pytest.raises(ModelError, match="config enc_depth"):
        save_decoder_file(shallower, out, tiny_model)
    decoder = decoder_file(tiny_model, tmp_path / "decoder.safetensors")
    with pytest.raises(ModelError, match="itself a decoder file"):
        save_decoder_file(load_model(decoder).tokenizer, out, decoder)
    assert not out.exists()


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


def test_a_decodes_streams_of_that_is_not_text_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"][DECODES_KEY] = 5  # safetensors itself writes only text
    raw = json.dumps(header).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    with pytest.raises(ModelError, match=DECODES_KEY):
        read_model_metadata(bad)


def test_the_shipped_fast_decoder_belongs_to_the_shipped_model() -> None:
    """Re-shipping the model without making its fast decoder again fails here."""
    fast_metadata, _ = read_model_metadata(FAST_DECODER_PATH)
    metadata, sha256 = read_model_metadata()
    assert fast_metadata[DECODES_KEY] == sha256.hex()
    assert fast_metadata["entropy_tables"] == metadata["entropy_tables"]


@pytest.mark.skipif(not DEV.is_dir(), reason="needs ../shared/data/dev")
def test_the_shipped_fast_decoder_decodes_the_shipped_models_streams(tmp_path: Path) -> None:
    """`decode --fast` reads a real clip's stream to the same tokens and decodes it near the
    full decoder's quality (MODEL.md: a few tenths of a dB on the dev clips)."""
    from infotok_codec.bench import reference_frames
    from infotok_codec.codec import encode_file
    from infotok_codec.media import VideoWriter

    frames = reference_frames(DEV / "vllama_boat.mp4", 16, 128)
    src, stream = tmp_path / "src.mkv", tmp_path / "s.itok"
    with VideoWriter(src, 128, 128, 25) as writer:
        writer.write(frames)
    encode_file(src, stream, budget=0.8)
    quality = {}
    for name, flags in (("full", ()), ("fast", ("--fast",))):
        out = tmp_path / f"{name}.mkv"
        run = infotok("decode", stream, out, "--tokens", tmp_path / f"{name}.npz", *flags)
        assert run.returncode == 0, run.stderr
        quality[name] = psnr(read_all(out), frames)
    full, other = np.load(tmp_path / "full.npz"), np.load(tmp_path / "fast.npz")
    assert all(np.array_equal(full[key], other[key]) for key in full.files)
    assert quality["fast"] > quality["full"] - 1.0, quality
    assert quality["fast"] > 20.0, quality
