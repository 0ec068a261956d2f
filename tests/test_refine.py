"""Encoder-side refinement (`encode --refine`): codes searched against the decoder decode closer
to the source, never further, through every rate mode, and the stream stays an ordinary one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import infotok_codec.model.refine as refinement
from infotok_codec.codec import Analysis, ChunkModel, decode_file, encode_file
from infotok_codec.inspect import file_info
from infotok_codec.media import read_frames
from infotok_codec.model import load_model, refine_indices
from infotok_codec.rate import RateControl
from infotok_codec.routing.rate_control import write

from helpers import DEV, assert_one_line_error, infotok, make_clip, pattern, psnr, read_all


def dev_window(name: str = "moviepy_sintel.mp4", size: int = 64) -> np.ndarray:
    """16 frames of a dev clip, short side scaled to `size`, centre-cropped square."""
    frames = next(read_frames(DEV / name, 16, max_frames=16, short_side=size))
    x0 = (frames.shape[2] - size) // 2
    return np.ascontiguousarray(frames[:, :size, x0 : x0 + size])


@pytest.mark.skipif(not DEV.is_dir(), reason="needs ../shared/data/dev")
def test_refined_tokens_decode_closer_to_a_real_clip() -> None:
    frames = dev_window()
    loaded = load_model()
    plain = ChunkModel(loaded, "cpu", bf16=False)
    refined = ChunkModel(loaded, "cpu", bf16=False, refine=5)
    n, h, w = frames.shape[:3]
    everything = np.ones((4, h // 8, w // 8), dtype=bool)
    three_quarters = everything.copy()
    three_quarters[:, 1::2, 1::2] = False
    for keep, gain in ((everything, 0.1), (three_quarters, 0.1)):
        before = psnr(plain.frames(plain.tokens(frames, keep), keep, n, h, w), frames)
        after = psnr(refined.frames(refined.tokens(frames, keep), keep, n, h, w), frames)
        assert after >= before + gain, (keep.mean(), before, after)


def test_refinement_never_decodes_further_than_the_encoders_codes(tiny_model: Path) -> None:
    tokenizer = load_model(tiny_model).tokenizer
    video = torch.from_numpy(pattern(8, 32, 48)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    keep = torch.ones(1, 2, 4, 6, dtype=torch.bool)
    keep[..., ::3] = False
    for mask in (None, keep):
        errors = []
        for indices in (tokenizer.encode(video, mask), refine_indices(tokenizer, video, 4, mask)):
            recon = tokenizer.decode(indices, mask, (8, 32, 48))
            errors.append(float((recon - video).square().mean()))
        assert errors[1] <= errors[0]
    assert all(p.requires_grad for p in tokenizer.parameters())  # left as it found them
    with pytest.raises(ValueError, match="at least 1"):
        refine_indices(tokenizer, video, 0)


@pytest.mark.skipif(not DEV.is_dir(), reason="needs ../shared/data/dev")
def test_recomputing_activations_changes_no_gradient_and_no_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Large tiles recompute the decoder's activations in the backward pass (less memory): the
    gradients and the refined tokens are those of the held activations."""
    tokenizer = load_model().tokenizer
    frames = dev_window(size=64)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        start = tokenizer.code_inputs(tokenizer.features(video))
    grads = []
    for recompute in (False, True):
        inputs = start.clone().requires_grad_(True)
        recon = tokenizer.decode_codes(tokenizer.fsq(inputs), None, (16, 64, 64), recompute)
        (grad,) = torch.autograd.grad((recon - video).square().mean(), inputs)
        grads.append(grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-9)
    held = refine_indices(tokenizer, video, 3)
    monkeypatch.setattr(refinement, "RECOMPUTE_ABOVE", 1)
    assert torch.equal(refine_indices(tokenizer, video, 3), held)


def test_codes_are_chosen_at_their_price_in_bits(tiny_model: Path) -> None:
    tokenizer = load_model(tiny_model).tokenizer
    video = torch.from_numpy(pattern(8, 32, 48)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    own = tokenizer.encode(video)
    free = refine_indices(tokenizer, video, 4)
    assert not torch.equal(free, own)  # the search moved codes (else this test shows nothing)
    # Bits that do not change: the lowest error wins, as without a count.
    assert torch.equal(refine_indices(tokenizer, video, 4, bits=lambda idx: 1000.0), free)
    # Any change priced out of reach: the encoder's own codes.
    dear = refine_indices(
        tokenizer, video, 4, bits=lambda idx: 1e3 + 1e9 * float((idx != own).sum())
    )
    assert torch.equal(dear, own)


def test_a_refined_stream_is_an_ordinary_stream(clip, tiny_model: Path, tmp_path: Path) -> None:
    src = clip(frames=20)
    run = infotok(
        "encode", src, tmp_path / "r.itok", "--model", tiny_model, "--refine", "2", "--json"
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["refine"] == 2
    decode_file(tmp_path / "r.itok", tmp_path / "r.mkv", model=tiny_model)
    assert read_all(tmp_path / "r.mkv").shape == read_all(src).shape
    plain = encode_file(src, tmp_path / "p.itok", model=tiny_model)
    assert plain.refine == 0
    refined, plain_info = file_info(tmp_path / "r.itok"), file_info(tmp_path / "p.itok")
    assert refined.positions == plain_info.positions
    assert (refined.refine, plain_info.refine) == (2, 0)  # the header records it


@pytest.mark.parametrize("steps", ["-1", "201", "two"])
def test_refine_steps_outside_the_range_are_a_usage_error(
    clip, tiny_model: Path, tmp_path: Path, steps: str
) -> None:
    run = infotok(
        "encode", clip(frames=4), tmp_path / "o.itok", "--model", tiny_model, "--refine", steps
    )
    assert_one_line_error(run, 2, "--refine")
    assert not (tmp_path / "o.itok").exists()


def test_quality_mode_searches_the_refined_tokens(tmp_path: Path) -> None:
    # The search decodes what pass 2 writes: with refinement on, each chunk still lands in
    # [target, target + 0.5] dB, measured on the decoded file.
    src = make_clip(tmp_path / "busy.mkv", pattern(32, 64, 64), codec="ffv1", pix_fmt="bgr0")
    with Analysis(src, refine=2) as analysis:
        result = write(analysis, tmp_path / "q.itok", RateControl.quality(20.0))
    decode_file(tmp_path / "q.itok", tmp_path / "q.mkv")
    decoded, source = read_all(tmp_path / "q.mkv"), read_all(src)
    measured = [psnr(decoded[s : s + 16], source[s : s + 16]) for s in (0, 16)]
    assert all(20.0 <= p <= 20.5 for p in measured), measured
    assert result.chunk_psnr == pytest.approx(measured, abs=1e-6)
    assert result.refine == 2
