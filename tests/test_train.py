"""Training: a short run lowers the loss and writes a loadable model; DDP runs under torchrun."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from infotok_codec import InfotokError
from infotok_codec.media import read_frames
from infotok_codec.model.tokenizer import (
    DEFAULT_MODEL_PATH,
    Tokenizer,
    TokenizerConfig,
    load_model,
    save_model,
)
from infotok_codec.training import TrainOptions, init_weights, reconstruction_loss, train
from infotok_codec.training.loop import frame_msssim, msssim_window

from helpers import TINY

# The light router's head is fitted at every run's end at the same cost whatever the network
# (400 windows, 600 steps by default: minutes for a tiny one); the tests ask for a small fit.
QUICK_HEAD = {"router_windows": 8, "router_steps": 20}


def test_twenty_steps_lower_the_loss_and_write_a_model(clip, tmp_path: Path) -> None:
    src = clip(frames=40, width=96, height=80, name="train.mp4")
    out = tmp_path / "m.safetensors"
    report = train(
        TrainOptions(
            data=[src],
            out=out,
            minutes=10,
            max_steps=20,
            stage2_fraction=0.0,
            batch=2,
            frames=8,
            crop=32,
            lr=3e-3,
            warmup_steps=2,
            short_side=80,
            threads=2,
            config=TINY,
            **QUICK_HEAD,
        )
    )
    assert report.steps == 20
    assert report.first_loss is not None and report.last_loss is not None
    assert report.last_loss < 0.7 * report.first_loss
    loaded = load_model(out)
    assert loaded.tables_json and loaded.name == "tiny-test"
    # The light router's head is fitted to the trained network at the end, like the tables.
    assert loaded.light_head is not None
    info = json.loads(loaded.metadata["light_router"])
    assert info["windows"] == 8 and info["steps"] == 20  # one clip: none held out
    recipe = json.loads(loaded.metadata["recipe"])
    assert recipe["steps"] == 20 and recipe["data_files"] == ["train.mp4"]
    assert len(loaded.metadata["data_manifest_sha256"]) == 64


def test_an_existing_model_file_is_not_replaced_without_force(clip, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    opts = TrainOptions(data=[clip(frames=8)], out=out, max_steps=1, config=TINY)
    with pytest.raises(InfotokError, match="already exists"):
        train(opts)
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"minutes": 0}, "minutes"),
        ({"batch": 0}, "batch"),
        ({"crop": 7}, "crop"),
        ({"frames": 6}, "frames"),
        ({"lr": -1.0}, "learning rate"),
        ({"stage2_fraction": 2.0}, "stage2_fraction"),
        ({"threads": 0}, "threads"),
        ({"max_steps": 0}, "max steps"),
        ({"router_windows": 1}, "router windows"),
        ({"router_steps": 0}, "router steps"),
        ({"crop": 128, "short_side": 96}, "larger than the short side"),
        ({"resume": True, "init": Path("m.safetensors")}, "not both"),
        ({"decoder_only": True}, "give --init"),
        ({"msssim_weight": -1.0}, "ms-ssim weight"),
        ({"msssim_weight": 1.0, "crop": 32}, "MS-SSIM's five scales"),
    ],
)
def test_unusable_settings_are_refused_before_any_work(
    tmp_path: Path, change: dict[str, float], needle: str
) -> None:
    with pytest.raises(InfotokError, match=needle):
        TrainOptions(data=[tmp_path], out=tmp_path / "m.safetensors", **change)  # type: ignore[arg-type]


def test_a_fresh_run_does_not_replace_a_checkpoint_unasked(clip, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    ckpt = tmp_path / "m.safetensors.ckpt.pt"
    ckpt.write_bytes(b"an earlier run")
    with pytest.raises(InfotokError, match="--resume continues it, --force starts over"):
        train(TrainOptions(data=[clip(frames=8)], out=out, max_steps=1, config=TINY))
    assert ckpt.read_bytes() == b"an earlier run" and not out.exists()


def test_resume_needs_a_checkpoint(clip, tmp_path: Path) -> None:
    opts = TrainOptions(data=[clip(frames=8)], out=tmp_path / "m.safetensors", resume=True)
    with pytest.raises(InfotokError, match="no checkpoint to resume from"):
        train(opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]


def test_stage_two_and_resume(clip, tmp_path: Path) -> None:
    src = clip(frames=24, width=64, height=64, name="train.mp4")
    out = tmp_path / "m.safetensors"
    common = dict(
        data=[src],
        out=out,
        minutes=10,
        stage2_fraction=1.0,
        batch=2,
        frames=8,
        crop=40,
        warmup_steps=2,
        short_side=64,
        threads=2,
        mse_weight=4.0,
        msssim_weight=0.5,
        config=TINY,
        **QUICK_HEAD,
    )
    train(TrainOptions(max_steps=3, **common))  # type: ignore[arg-type]
    report = train(TrainOptions(max_steps=5, resume=True, **common))  # type: ignore[arg-type]
    assert report.steps == 5
    recipe = json.loads(load_model(out).metadata["recipe"])
    options = recipe["options"]
    assert options["mse_weight"] == 4.0 and options["stage2_fraction"] == 1.0
    assert options["msssim_weight"] == 0.5


def test_the_model_file_holds_the_weight_average_across_a_resume(clip, tmp_path: Path) -> None:
    src = clip(frames=24, width=64, height=64, name="train.mp4")
    out = tmp_path / "m.safetensors"
    common = dict(
        data=[src],
        out=out,
        minutes=10,
        stage2_fraction=0.0,
        batch=2,
        frames=8,
        crop=32,
        warmup_steps=2,
        short_side=64,
        threads=2,
        lr=3e-3,
        config=TINY,
        **QUICK_HEAD,
    )
    train(TrainOptions(max_steps=2, weight_average=0.5, **common))  # type: ignore[arg-type]
    train(TrainOptions(max_steps=4, weight_average=0.5, resume=True, **common))  # type: ignore[arg-type]
    ckpt = torch.load(out.with_name(out.name + ".ckpt.pt"), map_location="cpu", weights_only=False)
    shipped = load_model(out).tokenizer.state_dict()
    for name, average in ckpt["average"].items():
        assert torch.equal(shipped[name], average.to(torch.float16).float()), name
    # The average lags the weights: after 4 steps at a high rate they differ.
    assert not torch.equal(ckpt["average"]["to_code.weight"], ckpt["model"]["to_code.weight"])
    with pytest.raises(InfotokError, match="weight-average decay"):
        TrainOptions(weight_average=1.0, **common)  # type: ignore[arg-type]


def test_squared_error_term_weighs_concentrated_errors_more() -> None:
    x = torch.zeros(1, 3, 4, 8, 8)
    spread = torch.full_like(x, 0.1)  # the same L1 error, spread evenly ...
    concentrated = torch.zeros_like(x)
    concentrated[..., :2, :] = 0.4  # ... or on a quarter of the pixels
    assert reconstruction_loss(spread, x, 0.0) == pytest.approx(
        reconstruction_loss(concentrated, x, 0.0).item()
    )
    assert reconstruction_loss(concentrated, x, 10.0) > reconstruction_loss(spread, x, 10.0) + 0.1


def test_msssim_term_scores_frames_and_passes_gradients(clip) -> None:
    assert [msssim_window(s) for s in (256, 161, 160, 128, 64, 33, 32)] == [11, 11, 9, 7, 3, 3, 0]
    frames = np.concatenate(list(read_frames(clip(frames=4, width=64, height=64), 4)))
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, T, H, W)
    assert frame_msssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert reconstruction_loss(x, x, 10.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    recon = (x + 0.2 * torch.randn_like(x)).requires_grad_()
    term = reconstruction_loss(recon, x, 0.0, 1.0) - reconstruction_loss(recon, x, 0.0, 0.0)
    assert 0.05 < term.item() < 1.0  # 1 − MS-SSIM of a noisy copy
    with torch.autocast("cpu", dtype=torch.bfloat16):  # scored in float32 all the same
        assert frame_msssim(recon, x).item() == pytest.approx(1 - term.item(), abs=1e-6)
    term.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_ddp_with_two_cpu_processes(clip, tmp_path: Path) -> None:
    src = clip(frames=24, width=64, height=64, name="train.mp4")
    out = tmp_path / "ddp.safetensors"
    config = json.dumps({k: v for k, v in TINY.__dict__.items() if k != "levels"})
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "infotok_codec",
            "train",
            str(src),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--batch",
            "1",
            "--crop",
            "32",
            "--short-side",
            "64",
            "--threads",
            "1",
            "--config",
            config,
            "--router-windows",
            "8",
            "--router-steps",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with safe_open(str(out), framework="pt") as f:
        recipe = json.loads(f.metadata()["recipe"])
        head = json.loads(f.metadata()["light_router"])
    assert recipe["processes"] == 2 and recipe["steps"] == 3
    assert head["windows"] == 8 and head["steps"] == 20


def test_decoder_only_training_keeps_every_token(clip, tiny_model: Path, tmp_path: Path) -> None:
    src = clip(frames=16, width=64, height=64, name="train.mp4")
    out = tmp_path / "m.safetensors"
    common = dict(
        data=[src],
        out=out,
        init=tiny_model,
        decoder_only=True,
        stage2_fraction=1.0,
        batch=2,
        frames=8,
        crop=32,
        lr=1e-2,
        warmup_steps=1,
        short_side=64,
        threads=2,
        config=TINY,
        **QUICK_HEAD,
    )
    train(TrainOptions(max_steps=3, **common))  # type: ignore[arg-type]
    before, after = load_model(tiny_model).tokenizer, load_model(out).tokenizer
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    assert torch.equal(before.encode(video), after.encode(video))
    changed = [
        name
        for name, p in after.state_dict().items()
        if not torch.equal(p, before.state_dict()[name])
    ]
    assert changed and all(
        n.startswith(("decoder.", "decompressor.", "from_code.", "dropped")) for n in changed
    )
    resumed = {**common, "init": None, "resume": True, "decoder_only": False}
    with pytest.raises(InfotokError, match="the decoding half only"):
        train(TrainOptions(max_steps=4, **resumed))  # type: ignore[arg-type]
    report = train(TrainOptions(max_steps=5, **{**resumed, "decoder_only": True}))  # type: ignore[arg-type]
    assert report.steps == 5
    assert torch.equal(before.encode(video), load_model(out).tokenizer.encode(video))
    deeper = TokenizerConfig.override({**TINY.__dict__, "enc_blocks2": TINY.enc_blocks2 + 1})
    grown = {**common, "out": tmp_path / "g.safetensors", "config": deeper}
    with pytest.raises(InfotokError, match="cannot start with new blocks"):
        train(TrainOptions(max_steps=1, **grown))  # type: ignore[arg-type]


def test_fine_tuning_starts_from_a_model_file(tiny_model: Path, tmp_path: Path) -> None:
    with safe_open(str(tiny_model), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "will_drop"}  # noqa: SIM118
    older = tmp_path / "older.safetensors"
    save_file(tensors, str(older), metadata=metadata)
    model = Tokenizer(TINY)
    assert init_weights(model, older) == ["will_drop"]
    assert torch.equal(model.to_code.weight, tensors["to_code.weight"].float())
    assert not model.will_drop.any()
    other = Tokenizer(TokenizerConfig.override({**TINY.__dict__, "c1": 24}))
    with pytest.raises(InfotokError, match="config differs"):
        init_weights(other, older)


def test_a_deeper_model_starts_exactly_as_the_file_it_grows_from(
    tiny_model: Path, tmp_path: Path
) -> None:
    shallow = load_model(tiny_model).tokenizer
    deeper_config = TokenizerConfig.override(
        {**TINY.__dict__, "dec_blocks1": TINY.dec_blocks1 + 1, "enc_blocks2": TINY.enc_blocks2 + 2}
    )
    deeper = Tokenizer(deeper_config)
    new = init_weights(deeper, tiny_model)
    assert new and all(k.startswith(("decoder.stage1.", "encoder.stage2.")) for k in new)
    deeper.eval()
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(shallow(video), deeper(video))
    deeper_file = tmp_path / "deeper.safetensors"
    save_model(deeper, deeper_file, tables_json=load_model(tiny_model).tables_json)
    with pytest.raises(InfotokError, match="config differs"):  # blocks are never dropped
        init_weights(Tokenizer(TINY), deeper_file)


def test_fine_tuning_starts_from_the_shipped_file_and_leaves_its_router_head_out() -> None:
    model = Tokenizer(TokenizerConfig())
    assert init_weights(model, DEFAULT_MODEL_PATH) == []
    shipped = load_model(DEFAULT_MODEL_PATH)
    assert shipped.light_head is not None  # the shipped file carries one
    assert torch.equal(model.to_code.weight, shipped.tokenizer.to_code.weight)


def test_stage_two_masks_are_the_routers_own() -> None:
    from infotok_codec.routing import router as routing
    from infotok_codec.training import sample_keep_masks

    random.seed(0)
    torch.manual_seed(0)
    model = Tokenizer(TINY).eval()
    x = torch.rand(4, 3, 8, 32, 32) * 2 - 1
    keep, _ = sample_keep_masks(model, x, None, False, spread_share=1.0)
    for mask in keep.numpy():
        spread = routing.select_positions("uniform", None, mask.shape, int(mask.sum()))
        assert np.array_equal(mask, spread)
    keep, _ = sample_keep_masks(model, x, None, False, spread_share=0.0)
    with torch.no_grad():
        error = model.error_map(x).numpy()
    partial = 0
    for mask, e in zip(keep.numpy(), error, strict=True):
        fixed = routing.select_positions("fixed", e, mask.shape, int(mask.sum()))
        assert np.array_equal(mask, fixed)
        if not mask.all():  # a clip drawn at rate 1 keeps everything under any router
            partial += 1
            assert not np.array_equal(
                mask, routing.select_positions("uniform", None, mask.shape, int(mask.sum()))
            )
    assert partial > 0


def test_stage_two_full_rate_share_keeps_clips_whole() -> None:
    from infotok_codec.training import sample_keep_masks

    random.seed(1)
    model = Tokenizer(TINY).eval()
    x = torch.rand(4, 3, 8, 32, 32) * 2 - 1
    keep, _ = sample_keep_masks(model, x, None, False, spread_share=0.0, full_rate_share=1.0)
    assert keep.all()
    keep, _ = sample_keep_masks(model, x, None, False, spread_share=0.0, full_rate_share=0.0)
    assert not keep.all()


def test_training_imports_without_pyav() -> None:
    """The training loop's parts import where PyAV is missing (a lent GPU's image, where
    benchmarks/gpu_campaign.py trains on clips decoded with OpenCV): PyAV is imported only
    where files are decoded."""
    code = (
        "import sys\n"
        "class NoPyAV:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'av' or name.startswith('av.'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoPyAV())\n"
        "import infotok_codec.training, infotok_codec.routing\n"
        "assert 'av' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
