"""The `light` router: its head fitted, stored and strictly loaded; encodes routed by it."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from infotok_codec import InfotokError, ModelError
from infotok_codec.codec import Analysis, ChunkModel, decode_file, encode_file, read_tokens
from infotok_codec.inspect import file_info
from infotok_codec.media import probe, read_frames
from infotok_codec.model import load_model
from infotok_codec.model.light_router import HEAD_KEY, HEAD_PREFIX
from infotok_codec.routing import allocate_counts
from infotok_codec.routing.rate_control import byte_curves

from helpers import assert_one_line_error, infotok, make_clip, pattern


@pytest.fixture(scope="module")
def light_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a head fitted by `infotok fit-router` on two generated clips."""
    folder = tmp_path_factory.mktemp("light")
    data = folder / "data"
    data.mkdir()
    make_clip(data / "a.mkv", pattern(16, 64, 64), codec="ffv1")
    busy = pattern(16, 64, 64)
    busy[:, :32] = 128  # half flat, half textured: errors to rank
    make_clip(data / "b.mkv", busy, codec="ffv1")
    out = folder / "light.safetensors"
    run = infotok(
        "fit-router", tiny_model, "--data", data, "--out", out, "--windows", "6", "--steps", "20"
    )
    assert run.returncode == 0, run.stderr
    assert "light router head fitted on" in run.stderr
    return out


def _raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    return load_file(str(path)), metadata


def test_fit_router_adds_a_head_and_copies_the_network_byte_for_byte(
    tiny_model: Path, light_model: Path
) -> None:
    before, meta_before = _raw(tiny_model)
    after, meta_after = _raw(light_model)
    head = {k for k in after if k.startswith(HEAD_PREFIX)}
    assert head and not any(k.startswith(HEAD_PREFIX) for k in before)
    assert set(after) - head == set(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype
        assert after[name].numpy().tobytes() == tensor.numpy().tobytes(), name
    assert {k: v for k, v in meta_after.items() if k != HEAD_KEY} == meta_before
    info = json.loads(meta_after[HEAD_KEY])
    assert info["windows"] + info["held_out_windows"] == 6 and info["steps"] == 20
    assert load_model(light_model).light_head is not None
    assert load_model(tiny_model).light_head is None


def test_fit_router_never_overwrites_without_force(
    light_model: Path, tmp_path: Path, clip: Callable[..., Path]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    clip(frames=16, width=64, height=64, name="data/c.mkv")
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(light_model.read_bytes())
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    refused = infotok("fit-router", copy, "--data", data, "--windows", "2", "--steps", "2")
    assert_one_line_error(refused, 1, "--force")
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    forced = infotok(
        "fit-router", copy, "--data", data, "--windows", "2", "--steps", "2", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert hashlib.sha256(copy.read_bytes()).hexdigest() != digest
    assert load_model(copy).light_head is not None


def _rewrite(
    src: Path,
    dst: Path,
    edit_tensors: Callable[[dict[str, torch.Tensor]], None],
    edit_meta: Callable[[dict[str, str]], None],
) -> Path:
    tensors, metadata = _raw(src)
    edit_tensors(tensors)
    edit_meta(metadata)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def _keep(_: object) -> None:
    return None


def test_light_head_is_stored_and_strictly_loaded(light_model: Path, tmp_path: Path) -> None:
    loaded = load_model(light_model)
    assert loaded.light_head is not None
    stored, _ = _raw(light_model)
    for name, value in loaded.light_head.state_dict().items():
        assert torch.equal(value, stored[HEAD_PREFIX + name].float())
    head_names = sorted(k for k in stored if k.startswith(HEAD_PREFIX))

    def drop_one(t: dict[str, torch.Tensor]) -> None:
        del t[head_names[0]]

    def add_one(t: dict[str, torch.Tensor]) -> None:
        t[HEAD_PREFIX + "stray.weight"] = torch.zeros(3, dtype=torch.float16)

    def reshape_one(t: dict[str, torch.Tensor]) -> None:
        t[head_names[0]] = torch.zeros(2, dtype=torch.float16)

    def drop_meta(m: dict[str, str]) -> None:
        del m[HEAD_KEY]

    def bad_json(m: dict[str, str]) -> None:
        m[HEAD_KEY] = m[HEAD_KEY][:-3]

    def wrong_width(m: dict[str, str]) -> None:
        m[HEAD_KEY] = json.dumps({**json.loads(m[HEAD_KEY]), "channels": 5})

    cases = [
        (drop_one, _keep, "light router weights do not match"),
        (add_one, _keep, "light router weights do not match"),
        (reshape_one, _keep, "light router weights do not match"),
        (_keep, drop_meta, "weights do not match the model config"),
        (_keep, bad_json, "light router metadata is not valid"),
        (_keep, wrong_width, "light router weights do not match"),
    ]
    for k, (tensors, meta, message) in enumerate(cases):
        path = _rewrite(light_model, tmp_path / f"bad{k}.safetensors", tensors, meta)
        with pytest.raises(ModelError, match=message):
            load_model(path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.hex())))
def test_damaged_head_metadata_is_a_model_error(
    light_model: Path, tmp_path: Path, text: str
) -> None:
    def damage(m: dict[str, str]) -> None:
        m[HEAD_KEY] = text

    path = _rewrite(light_model, tmp_path / "damaged.safetensors", _keep, damage)
    with contextlib.suppress(ModelError):  # anything else fails the test
        load_model(path)


def test_light_router_on_a_model_without_a_head_is_one_line_error(
    clip: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=8, width=64, height=64)
    out = tmp_path / "o.itok"
    run = infotok("encode", src, out, "--router", "light", "--model", tiny_model, "--quiet")
    assert_one_line_error(run, 1, "no light router head", "fit-router")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.8, 1.0])
def test_light_encode_meets_the_budget_and_decodes(
    clip: Callable[..., Path], light_model: Path, tmp_path: Path, budget: float
) -> None:
    src = clip(frames=64, width=128, height=64)
    itok = tmp_path / "o.itok"
    result = encode_file(src, itok, budget=budget, router="light", model=light_model)
    assert result.realised_rate == pytest.approx(budget, rel=0.005)
    info = file_info(itok)
    assert info.router == "light"
    assert info.tokens / info.positions == pytest.approx(result.realised_rate)
    decode_file(itok, tmp_path / "rec.mkv", model=light_model)
    assert probe(tmp_path / "rec.mkv").frames == 64


def test_light_chunk_rates_follow_the_heads_predicted_means(
    clip: Callable[..., Path], light_model: Path, tmp_path: Path
) -> None:
    # Flat for two chunks and busy for two, so the head's chunk means differ.
    frames = np.concatenate(list(read_frames(clip(frames=64, width=64, height=64))))
    frames[:32] = 128
    mixed = make_clip(tmp_path / "mixed.mkv", frames, codec="ffv1")
    loaded = load_model(light_model)
    engine = ChunkModel(loaded, "cpu")
    predicted = [float(engine.light_error_map(c)[0].mean()) for c in read_frames(mixed, 16)]
    assert len(set(predicted)) > 1
    positions = [4 * 8 * 8] * 4
    expected = allocate_counts("light", 0.5, positions, predicted)
    result = encode_file(mixed, tmp_path / "o.itok", budget=0.5, router="light", model=loaded)
    assert result.chunk_rates == [k / n for k, n in zip(expected, positions, strict=True)]
    assert len(set(result.chunk_rates)) > 1  # not `fixed`'s equal shares


def test_light_pass_two_tokens_equal_a_masked_encode_from_the_frames(
    tmp_path: Path, light_model: Path
) -> None:
    # 1,100×1,000 pixels: tiled, so spilled features are cut per tile as the frames are.
    src = make_clip(tmp_path / "big.mkv", pattern(4, 1000, 1100), codec="ffv1")
    loaded = load_model(light_model)
    with Analysis(src, loaded, device="cpu", light=True) as analysis:
        # Spilled a tile at a time (2 × 3 tiles of 512): pass 2 holds one tile's at a time.
        assert [len(c.features_offsets or []) for c in analysis.chunks] == [6]
        analysis.write(tmp_path / "o.itok", router="light", budget=0.4)
    engine = ChunkModel(loaded, "cpu")
    frames = np.concatenate(list(read_frames(src, 16)))
    (chunk,) = read_tokens(tmp_path / "o.itok", loaded)
    fresh = engine.tokens(frames, chunk.keep)
    assert np.array_equal(fresh[chunk.keep], chunk.indices[chunk.keep])


def test_light_pass_two_codes_from_the_spilled_features_without_reading_the_input(
    clip: Callable[..., Path], light_model: Path, tmp_path: Path
) -> None:
    # Pass 2 of a `light` encode runs the compressor on pass 1's features: the input is not
    # read again, so a source replaced between the passes writes pass 1's stream. Refinement
    # needs the frames, and refuses the replaced source as `elbo` does.
    src = clip(frames=32, width=64, height=64, name="a.mkv")
    loaded = load_model(light_model)
    with Analysis(src, loaded, device="cpu", light=True) as analysis:
        analysis.write(tmp_path / "before.itok", router="light", budget=0.5)
        clip(frames=8, width=64, height=64, name="b.mkv").replace(src)
        analysis.write(tmp_path / "after.itok", router="light", budget=0.5)
    assert (tmp_path / "before.itok").read_bytes() == (tmp_path / "after.itok").read_bytes()
    # Rate control's byte sampling codes from the same features: the replaced source is not read.
    with Analysis(src, loaded, device="cpu", light=True) as analysis:
        before = byte_curves(analysis, "light", "context")
        clip(frames=8, width=64, height=64, name="e.mkv").replace(src)
        assert byte_curves(analysis, "light", "context") == before
    src = clip(frames=32, width=64, height=64, name="c.mkv")
    with Analysis(src, loaded, device="cpu", light=True, refine=1) as analysis:
        clip(frames=8, width=64, height=64, name="d.mkv").replace(src)
        with pytest.raises(InfotokError, match="the input changed"):
            analysis.write(tmp_path / "refined.itok", router="light", budget=0.5)
    assert not (tmp_path / "refined.itok").exists()


def test_an_analysis_serves_only_the_routers_its_maps_are_for(
    clip: Callable[..., Path], light_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=16, width=64, height=64)
    with Analysis(src, light_model, device="cpu", light=True) as light:
        with pytest.raises(InfotokError, match="cannot use this analysis's light error maps"):
            light.write(tmp_path / "e.itok", router="elbo", budget=0.5)
        light.write(tmp_path / "u.itok", router="uniform", budget=0.5)
    with (
        Analysis(src, light_model, device="cpu") as full,
        pytest.raises(InfotokError, match="cannot use this analysis's full-rate error maps"),
    ):
        full.write(tmp_path / "l.itok", router="light", budget=0.5)
    assert not (tmp_path / "e.itok").exists() and not (tmp_path / "l.itok").exists()


def _bench(src: Path, model: Path, out: Path, routers: str) -> subprocess.CompletedProcess[str]:
    return infotok(
        "bench",
        src,
        "--model",
        model,
        "--routers",
        routers,
        "--budgets",
        "0.5,0.75",
        "--codecs",
        "none",
        "--metrics",
        "psnr",
        "--frames",
        "16",
        "--size",
        "64",
        "--out",
        out,
        "--keep-files",
    )


def test_bench_runs_light_beside_elbo_and_times_them(
    clip: Callable[..., Path], light_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=16, width=64, height=64, name="gen.mkv")
    out = tmp_path / "res"
    run = _bench(src, light_model, out, "elbo,light")
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "results.json").read_text())
    light = [r for r in report["results"] if r["method"] == "light"]
    assert sorted(r["param"] for r in light) == [0.5, 0.75]
    for r in light:
        itok = out / "files" / f"gen.mkv.light.{r['param']}.itok"
        assert r["bytes"] == itok.stat().st_size
        assert file_info(itok).router == "light"
        assert r["seconds"]["analyse"] > 0
    timing = report["summary"]["timing"]
    assert timing["light_encode_time_over_elbo"] > 0


def test_bench_light_without_a_head_is_refused_before_any_work(
    clip: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    src = clip(frames=16, width=64, height=64)
    out = tmp_path / "res"
    assert_one_line_error(_bench(src, tiny_model, out, "light"), 1, "no light router head")
    assert not out.exists()


def test_fit_router_defaults_are_the_librarys() -> None:
    # The CLI writes the defaults out (it imports no torch until it runs); they must not drift.
    from infotok_codec.cli.training import fit_router
    from infotok_codec.routing import FIT_STEPS, FIT_WINDOWS

    params = inspect.signature(fit_router).parameters
    assert (params["windows"].default, params["steps"].default) == (FIT_WINDOWS, FIT_STEPS)
