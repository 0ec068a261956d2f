"""The tokenizer: shapes for any size, FSQ code/index symmetry, causality, strict model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from infotok_codec import InfotokError, ModelError
from infotok_codec.model import FSQ, Tokenizer, TokenizerConfig, compressor, load_model
from infotok_codec.model.autoencoder import (
    BY_FRAME_ABOVE,
    CausalTemporalConv,
    ResBlock,
    SpatialConv,
    by_frame,
    by_products,
    depth_first_order,
    depth_first_shuffle,
    depth_first_unshuffle,
)
from infotok_codec.model.compressor import WindowTransformer
from infotok_codec.model.tokenizer import (
    DEFAULT_MODEL_PATH,
    PACKED_MAGIC,
    pack_model,
    read_model_metadata,
    save_model,
)

from helpers import TINY


@pytest.mark.parametrize(("t", "h", "w"), [(1, 1, 1), (5, 17, 33), (16, 64, 72), (7, 9, 130)])
def test_any_size_is_padded_and_cropped_back(t: int, h: int, w: int) -> None:
    model = Tokenizer(TINY).eval()
    video = torch.rand(1, 3, t, h, w) * 2 - 1
    indices, error = model.encode(video), model.error_map(video)
    expected = (1, -(-t // 4), -(-h // 8), -(-w // 8))
    assert indices.shape == expected and error.shape == expected
    assert indices.min() >= 0 and indices.max() < 64000
    recon = model.decode(indices, None, (t, h, w))
    assert recon.shape == video.shape and recon.abs().max() <= 1


def test_codes_and_indices_are_inverse() -> None:
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    every_index = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(every_index)
    assert torch.equal(fsq.codes_to_indices(codes), every_index)
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(codes)), codes)
    quantized = fsq(torch.randn(1000, 6) * 3)
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(quantized)), quantized)
    assert torch.equal(fsq.indices_to_codes(torch.tensor(fsq.zero_index)), torch.zeros(6))


def test_compressor_attention_is_block_causal_in_time() -> None:
    # The conv stack's temporal kernels are causal too, but its GroupNorm statistics span the
    # whole chunk (see model/autoencoder.py), so causality is asserted where it holds exactly.
    transformer = WindowTransformer(32, 2, 2, 8).eval()
    features = torch.randn(1, 32, 4, 8, 8)
    changed = features.clone()
    changed[:, :, 3] = torch.randn(32, 8, 8)
    with torch.no_grad():
        a, b = transformer(features), transformer(changed)
    assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.equal(a[:, :, 3], b[:, :, 3])


def test_dropped_positions_change_the_reconstruction_only_through_the_mask() -> None:
    model = Tokenizer(TINY).eval()
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    indices = model.encode(video)
    keep = torch.rand(indices.shape) < 0.5
    other = torch.where(keep, indices, torch.randint_like(indices, 64000))
    # What sits at a dropped position is ignored: only kept indices travel.
    assert torch.equal(
        model.decode(indices, keep, (8, 32, 32)), model.decode(other, keep, (8, 32, 32))
    )


def test_masked_encode_tells_the_compressor_what_is_dropped() -> None:
    model = Tokenizer(TINY).eval()
    torch.nn.init.normal_(model.will_drop)
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    full = model.encode(video)
    keep = torch.rand(full.shape) < 0.5
    assert torch.equal(model.encode(video, torch.ones_like(keep)), full)
    masked = model.encode(video, keep)
    assert not torch.equal(masked[keep], full[keep])
    # Training sees the same masked codes the codec will write.
    codes = model.quantized_codes(video, keep)
    assert torch.equal(model.fsq.codes_to_indices(codes), masked)


def _rewrite(
    src: Path, dst: Path, *, metadata: dict[str, str] | None = None, drop: str | None = None
) -> Path:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != drop}  # noqa: SIM118
    meta.update(metadata or {})
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_loading_is_strict(tiny_model: Path, tmp_path: Path) -> None:
    assert load_model(tiny_model).name == "tiny-test"
    config = json.loads(safe_open(str(tiny_model), framework="pt").metadata()["config"])
    wider = _rewrite(
        tiny_model,
        tmp_path / "a.safetensors",
        metadata={"config": json.dumps({**config, "c1": 24})},
    )
    with pytest.raises(ModelError, match="do not match"):
        load_model(wider)
    extra_field = _rewrite(
        tiny_model, tmp_path / "b.safetensors", metadata={"config": json.dumps({**config, "x": 1})}
    )
    with pytest.raises(ModelError, match="config fields"):
        load_model(extra_field)
    missing = _rewrite(tiny_model, tmp_path / "c.safetensors", drop="dropped")
    with pytest.raises(ModelError, match="do not match"):
        load_model(missing)
    foreign = _rewrite(
        tiny_model, tmp_path / "d.safetensors", metadata={"format": "something-else"}
    )
    with pytest.raises(ModelError, match="format"):
        load_model(foreign)
    negative = _rewrite(
        tiny_model,
        tmp_path / "f.safetensors",
        metadata={"config": json.dumps({**config, "heads": -2})},
    )
    with pytest.raises(ModelError, match="heads -2 is not a positive integer"):
        load_model(negative)
    with pytest.raises(ModelError, match="c1 12 not a multiple of 8"):
        TokenizerConfig.override({"c1": 12})
    (tmp_path / "e.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="not a safetensors model"):
        load_model(tmp_path / "e.safetensors")
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_format_one_files_load_with_an_encoder_blind_to_the_mask(
    tiny_model: Path, tmp_path: Path
) -> None:
    older = _rewrite(
        tiny_model,
        tmp_path / "v1.safetensors",
        metadata={"format": "infotok-model-1"},
        drop="will_drop",
    )
    model = load_model(older).tokenizer
    assert not model.will_drop.any()
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    keep = torch.rand(1, 2, 4, 4) < 0.5
    assert torch.equal(model.encode(video, keep), model.encode(video))


def test_model_hash_covers_weights_and_tables(tiny_model: Path, tmp_path: Path) -> None:
    with safe_open(str(tiny_model), framework="pt") as f:
        tables = f.metadata()["entropy_tables"]
    changed = _rewrite(
        tiny_model, tmp_path / "t.safetensors", metadata={"entropy_tables": tables + " "}
    )
    assert load_model(changed).sha256 != load_model(tiny_model).sha256


def test_the_same_model_saved_again_is_the_same_file(tiny_model: Path, tmp_path: Path) -> None:
    # Streams name their model by the file's sha256: a model saved twice must keep its name
    # (safetensors alone writes the metadata in a random order, a different file each time).
    loaded = load_model(tiny_model)
    extra = {"recipe": {"steps": 5}, "note": "a", "z": "b", "data_manifest_sha256": "00"}
    files = [tmp_path / f"m{i}.safetensors" for i in range(3)]
    for path in files:
        save_model(loaded.tokenizer, path, tables_json=loaded.tables_json, extra=extra)
    assert len({path.read_bytes() for path in files}) == 1
    with safe_open(str(files[0]), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["recipe"]) == {"steps": 5} and metadata["z"] == "b"
    assert torch.equal(
        load_model(files[0]).tokenizer.state_dict()["to_code.weight"],
        loaded.tokenizer.state_dict()["to_code.weight"],
    )


def test_large_activations_run_by_frame_as_the_batched_block_computes() -> None:
    # A clip activation of at least BY_FRAME_ABOVE values runs a frame at a time without
    # autograd (and adds into its input); it must compute what the batched training form does.
    # Either memory layout, and two clips at once (each norm's statistics are per clip).
    torch.manual_seed(0)
    block = ResBlock(16)
    torch.nn.init.normal_(block.temporal.conv.weight, std=0.1)  # not the identity it starts as
    torch.nn.init.normal_(block.norm1.bias, std=0.5)
    x = torch.randn(2, 16, 8, 192, 192) * 3 + 1
    assert x[0].numel() >= BY_FRAME_ABOVE
    with torch.enable_grad():
        batched = block(x).detach()
    with torch.no_grad():
        assert by_frame(x)
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            by_frames = block(x.clone(memory_format=layout))
            torch.testing.assert_close(by_frames, batched, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        conv = SpatialConv(16, 8)
        one = x[:1]
        frames = conv.conv(one.transpose(1, 2)[0]).transpose(0, 1)[None]
        torch.testing.assert_close(conv(one), frames)


@pytest.mark.parametrize("frames", [1, 2, 3, 8])
def test_the_temporal_conv_as_matrix_products_computes_the_padded_conv(frames: int) -> None:
    # Without autograd, in float32 on the CPU, the temporal conv runs as three matrix products;
    # it must compute the replicate-padded Conv3d that training runs, for clips shorter than
    # the kernel too, two clips at once, either layout, with and without a bias.
    torch.manual_seed(frames)
    for bias in (True, False):
        conv = CausalTemporalConv(24)
        if not bias:
            conv.conv.bias = None
        torch.nn.init.normal_(conv.conv.weight, std=0.2)
        x = torch.randn(2, 24, frames, 12, 10)
        with torch.enable_grad():
            assert not by_products(x)
            padded = conv(x).detach()
        with torch.no_grad():
            assert by_products(x)
            for layout in (torch.contiguous_format, torch.channels_last_3d):
                products = conv(x.clone(memory_format=layout))
                assert products.is_contiguous(memory_format=torch.channels_last_3d)
                torch.testing.assert_close(products, padded, rtol=1e-5, atol=1e-5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert not by_products(x)  # bf16 keeps the conv: one rounding, not three


def test_windows_in_groups_compute_what_one_pass_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = WindowTransformer(dim=32, depth=2, heads=4, window=4, max_latent_frames=4).eval()
    x = torch.randn(1, 32, 2, 20, 12)  # 15 windows, the last row and column padded
    with torch.no_grad():
        grouped = net(x)
        monkeypatch.setattr(compressor, "WINDOW_GROUP", 4)
        assert compressor.WINDOW_GROUP < 15
        regrouped = net(x)
        monkeypatch.setattr(compressor, "WINDOW_GROUP", 1000)
        whole = net(x)
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(regrouped, whole, rtol=1e-5, atol=1e-5)


def test_depth_first_shuffles_are_the_trained_order_permuted_and_invert() -> None:
    # The weights were trained on (C, t, s, s) channels; the depth-first (t, s, s, C) layout
    # must be exactly that order permuted by `depth_first_order`, and shuffle must undo it.
    x = torch.randn(2, 5, 8, 16, 24)
    b, c, tt, h, w = x.shape
    trained = x.reshape(b, c, tt // 2, 2, h // 4, 4, w // 4, 4).permute(0, 1, 3, 5, 7, 2, 4, 6)
    trained = trained.reshape(b, c * 32, tt // 2, h // 4, w // 4)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        depth_first = depth_first_unshuffle(x.clone(memory_format=layout), 2, 4)
        assert torch.equal(depth_first, trained[:, depth_first_order(c, 2, 4)])
        assert torch.equal(depth_first_shuffle(depth_first, 2, 4), x)


def test_a_packed_model_loads_as_its_safetensors_file_with_the_same_hash(
    tiny_model: Path, tmp_path: Path
) -> None:
    packed = tmp_path / "tiny.safetensors.zst"
    pack_model(tiny_model, packed)
    assert packed.read_bytes()[:4] == PACKED_MAGIC
    plain, again = load_model(tiny_model), load_model(packed)
    assert again.sha256 == plain.sha256 and again.tables_json == plain.tables_json
    for name, tensor in plain.tokenizer.state_dict().items():
        assert torch.equal(again.tokenizer.state_dict()[name], tensor), name
    assert read_model_metadata(packed) == read_model_metadata(tiny_model)
    with pytest.raises(InfotokError, match="exists"):
        pack_model(tiny_model, packed)


def test_the_shipped_model_is_packed_and_under_25_mb() -> None:
    assert DEFAULT_MODEL_PATH.read_bytes()[:4] == PACKED_MAGIC
    assert DEFAULT_MODEL_PATH.stat().st_size < 25_000_000
