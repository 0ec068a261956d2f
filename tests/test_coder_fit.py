"""`infotok fit-coder`: the coder tables and the context coder's key prior refitted for a model
file, its network copied byte for byte, and streams coded from the prior (format version 5)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from infotok_codec.bitstream import VERSION, ContainerReader, FrequencyTables
from infotok_codec.bitstream.context_state import KeyPrior
from infotok_codec.codec import decode_file, encode_file, read_tokens
from infotok_codec.model import load_model

from helpers import assert_one_line_error, infotok, make_clip, pattern, read_all


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("coder-data")
    make_clip(folder / "a.mkv", pattern(32, 64, 64), codec="ffv1")
    make_clip(folder / "b.mkv", pattern(40, 64, 128)[:, :, ::-1].copy(), codec="ffv1")
    return folder


@pytest.fixture(scope="module")
def fitted(tiny_model: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coder") / "fitted.safetensors"
    run = infotok("fit-coder", tiny_model, "--data", data, "--out", out)
    assert run.returncode == 0, run.stderr
    assert "coder tables and key prior fitted" in run.stderr
    return out


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def test_fit_coder_writes_tables_with_a_key_prior_and_copies_the_rest(
    tiny_model: Path, fitted: Path
) -> None:
    before, after = load_file(str(tiny_model)), load_file(str(fitted))
    assert set(before) == set(after)
    for name, tensor in before.items():
        assert after[name].numpy().tobytes() == tensor.numpy().tobytes(), name
    old, new = _metadata(tiny_model), _metadata(fitted)
    assert {k: v for k, v in new.items() if k != "entropy_tables"} == {
        k: v for k, v in old.items() if k != "entropy_tables"
    }
    tables = FrequencyTables.from_json(new["entropy_tables"])
    assert tables.context_prior is not None
    prior = KeyPrior.from_json(tables.context_prior, tables.levels)
    derived = FrequencyTables.from_json(old["entropy_tables"]) if "entropy_tables" in old else None
    assert derived is None or derived.context_prior is None
    assert prior.select.shape == (4, 9) and len(prior.digits) == len(tables.levels)


def test_a_stream_coded_from_the_key_prior_round_trips(fitted: Path, tmp_path: Path, clip) -> None:
    src = clip(frames=40)
    out = tmp_path / "o.itok"
    encode_file(src, out, budget=0.6, model=fitted)
    with ContainerReader(out) as reader:
        assert reader.version == VERSION and reader.header.coder == "context"
    # Tokens read back equal the tokens the decoder turns into pixels, frame for frame.
    video = tmp_path / "r.mkv"
    decode_file(out, video, model=fitted)
    assert read_all(video).shape[0] == 40
    chunks = read_tokens(out, model=fitted)
    assert sum(int(c.keep.sum()) for c in chunks) > 0
    again = tmp_path / "again.itok"
    encode_file(src, again, budget=0.6, model=fitted)
    assert again.read_bytes() == out.read_bytes()


def test_fit_coder_never_overwrites_without_force(fitted: Path, data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(fitted.read_bytes())
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    refused = infotok("fit-coder", copy, "--data", data)
    assert_one_line_error(refused, 1, "--force")
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    forced = infotok("fit-coder", copy, "--data", data, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (
        load_model(copy).tables_json == load_model(fitted).tables_json
    )  # the fit is deterministic


def test_a_model_file_with_a_damaged_key_prior_is_one_line(
    fitted: Path, tmp_path: Path, clip
) -> None:
    from safetensors.torch import save_file

    metadata = _metadata(fitted)
    tables = FrequencyTables.from_json(metadata["entropy_tables"])
    metadata["entropy_tables"] = tables.with_context_prior('{"select": "AAAA"}').to_json()
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(fitted)), str(bad), metadata=metadata)
    run = infotok("encode", clip(frames=8), tmp_path / "o.itok", "--model", bad, "--quiet")
    assert_one_line_error(run, 1, "context prior")
    assert not (tmp_path / "o.itok").exists()
