"""A dataset in one command: a folder of videos encoded into a mirrored folder of streams.

Every video file under the input folder (by suffix, at any depth; hidden entries skipped)
becomes one `.itok` at the same relative path under the output folder. An output already there
is kept (unless `force`), so a run that stopped resumes where it was; a file that fails is
recorded and the run goes on; `manifest.json` in the output folder lists every file at the end.

Under `torchrun` the sorted file list is dealt round-robin across the ranks (one GPU each where
there are GPUs, else an equal share of the CPU threads), each rank encodes its share with the
same code a single process runs, so the streams are the same bytes, and rank 0 gathers the
entries over a gloo process group (CPU objects only, on GPU machines too) and writes the
manifest.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import torch
import torch.distributed as dist

from infotok_codec.bitstream import ContainerReader, check_coder
from infotok_codec.codec import (
    KEY_SECONDS,
    as_model,
    check_chunk_frames,
    check_refine,
    encode_file,
    key_interval_chunks,
    resolve_device,
)
from infotok_codec.errors import FormatError, InfotokError, VideoError
from infotok_codec.media import VIDEO_SUFFIXES, read_source_audio
from infotok_codec.model import LoadedModel
from infotok_codec.outputs import atomic_file
from infotok_codec.routing import router as routing

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "infotok-manifest"
MANIFEST_VERSION = 1
STREAM_SUFFIX = ".itok"
GATHER_TIMEOUT = timedelta(days=7)
"""How long rank 0 waits for the slowest rank's share: a share may take hours, and a rank that
dies ends the whole run anyway (torchrun stops the others)."""


@dataclass
class ManifestEntry:
    """One input file's outcome.

    Attributes:
        source: path relative to the input folder (POSIX separators).
        output: the stream's path relative to the output folder.
        status: ``encoded``; ``skipped`` (the stream was there, written with the same
            settings); or ``failed``.
        frames, bytes, bpp: of the stream (bpp = 8·bytes / (width·height·frames)); None
            when it failed.
        seconds: wall time this run spent on the file.
        error: the one-line reason it failed, else None.
    """

    source: str
    output: str
    status: str
    frames: int | None = None
    bytes: int | None = None
    bpp: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Shard:
    """This process's place in a `torchrun` job (rank 0 of 1 outside one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        """From torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE."""
        env = os.environ
        world = int(env.get("WORLD_SIZE", "1"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        return cls(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")), local_world)


@dataclass
class DatasetResult:
    """A folder encode: every file's entry on rank 0 (this rank's share on the others)."""

    src: Path
    dst: Path
    manifest: Path | None  # written by rank 0 only
    processes: int
    entries: list[ManifestEntry] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.entries)

    @property
    def failed(self) -> list[ManifestEntry]:
        return [e for e in self.entries if e.status == "failed"]


Tick = Callable[[ManifestEntry, int], None]
"""Called as `tick(entry, files_in_this_share)` after each file."""


def find_dataset_videos(folder: Path) -> list[Path]:
    """Video files under `folder` (relative paths, sorted), by suffix, hidden entries skipped
    (`._clip.mp4` files that macOS leaves are not videos)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_SUFFIXES:
                found.append(Path(root, name).relative_to(folder))
    return sorted(found)


def _device(device: str, shard: Shard) -> str:
    """One GPU per rank on a GPU machine; the given device otherwise."""
    if shard.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    return device


def _threads(threads: int | None, shard: Shard) -> int | None:
    """`threads`, or the ranks on this machine share its cores equally."""
    if threads is not None or shard.local_world == 1:
        return threads
    return max(1, len(os.sched_getaffinity(0)) // shard.local_world)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    # Our own errors are written for users; anything else is named by type, since it is a fault
    # in a library under us, not in the input's description.
    return line if isinstance(exc, InfotokError) else f"{type(exc).__name__}: {line}"


@dataclass(frozen=True)
class EncodeSettings:
    """What every stream of the dataset is encoded with (`encode_file`'s arguments)."""

    budget: float
    router: str
    coder: str
    chunk_frames: int
    audio: bool = True  # the sources' audio copied in (`encode --no-audio`: False)
    key_interval: float = KEY_SECONDS  # seconds between key chunks (`encode --key-interval`)
    refine: int = 0  # steps of encoder-side refinement (`encode --refine`)


class _Encoder:
    """Encodes one file of the dataset, or checks the stream a previous run left."""

    def __init__(
        self,
        src: Path,
        dst: Path,
        settings: EncodeSettings,
        model: LoadedModel,
        device: str,
        bf16: bool | None,
        force: bool,
    ) -> None:
        self.src, self.dst, self.settings = src, dst, settings
        self.model, self.device, self.bf16, self.force = model, device, bf16, force

    def __call__(self, source: Path, claimed_by: Path | None) -> ManifestEntry:
        out = source.with_suffix(STREAM_SUFFIX)
        entry = ManifestEntry(source.as_posix(), out.as_posix(), "failed")
        started = time.perf_counter()
        try:
            if claimed_by is not None:
                raise InfotokError(f"{out.as_posix()} is also the stream of {claimed_by}")
            if (self.dst / out).exists() and not self.force:
                existing = self._existing(self.dst / out, self.src / source)
                entry.frames, entry.bytes, entry.bpp = existing
                entry.status = "skipped"
            else:
                (self.dst / out).parent.mkdir(parents=True, exist_ok=True)
                result = encode_file(
                    self.src / source,
                    self.dst / out,
                    budget=self.settings.budget,
                    router=self.settings.router,
                    coder=self.settings.coder,
                    chunk_frames=self.settings.chunk_frames,
                    audio=self.settings.audio,
                    key_interval=self.settings.key_interval,
                    refine=self.settings.refine,
                    model=self.model,
                    device=self.device,
                    bf16=self.bf16,
                    force=self.force,
                )
                entry.frames, entry.bytes, entry.bpp = result.frames, result.bytes, result.bpp
                entry.status = "encoded"
        # One file's failure, whatever it is, must not cost the rest of a dataset run that may
        # have hours behind it; it is recorded with its reason. Ctrl-C and SIGTERM still stop.
        except Exception as exc:
            entry.error = _first_line(exc)
        entry.seconds = time.perf_counter() - started
        return entry

    def _existing(self, path: Path, source: Path) -> tuple[int, int, float]:
        """(frames, bytes, bpp) of a stream an earlier run left from `source`, if written with
        these settings and this model (`InfotokError` otherwise)."""
        try:
            with ContainerReader(path) as reader:
                h, size = reader.header, reader.file_size
                has_audio = reader.side_span[1] > 0
        except FormatError as exc:
            raise InfotokError(f"exists but is damaged ({exc}); --force re-encodes") from None
        wanted = self.settings
        audio = "copied" if has_audio else "left out"
        wanted_audio = "copied" if wanted.audio else "left out"
        if wanted.audio and not has_audio and not read_source_audio(source)[0]:
            wanted_audio = "left out"  # the source has none to copy (only then is it read)
        fps, chunk, coder = Fraction(h.fps_num, h.fps_den), wanted.chunk_frames, wanted.coder
        found = {
            "model": (h.model_hash.hex()[:12], self.model.sha256.hex()[:12]),
            "router": (h.router, wanted.router),
            "budget": (h.budget, wanted.budget),
            "coder": (h.coder, wanted.coder),
            "chunk_frames": (h.chunk_frames, wanted.chunk_frames),
            "key_interval": (
                h.key_interval,
                key_interval_chunks(wanted.key_interval, fps, chunk, coder),
            ),
            # Files before version 6 did not record it, and --force is how to be sure.
            "refine": ("unrecorded" if h.refine is None else h.refine, wanted.refine),
            "audio": (audio, wanted_audio),
        }
        differ = [f"{k} {old} (not {new})" for k, (old, new) in found.items() if old != new]
        if differ:
            raise InfotokError(
                f"exists, written with other settings: {', '.join(differ)}; --force re-encodes"
            )
        return h.frames, size, 8 * size / (h.width * h.height * h.frames)


def encode_dataset(
    src: str | Path,
    dst: str | Path,
    *,
    budget: float = 0.8,
    router: str = "elbo",
    model: LoadedModel | str | Path | None = None,
    chunk_frames: int = 16,
    coder: str = "context",
    key_interval: float = KEY_SECONDS,
    device: str = "auto",
    bf16: bool | None = None,
    threads: int | None = None,
    force: bool = False,
    audio: bool = True,
    refine: int = 0,
    tick: Tick | None = None,
    shard: Shard | None = None,
) -> DatasetResult:
    """Encode every video under folder `src` into the same relative path under `dst`, as
    `encode_file` would one by one, and write `dst/manifest.json` (rank 0).

    Settings are checked, the model is loaded and the file list is made before any file is
    encoded, so a bad setting fails once, not once per file.

    Raises:
        InfotokError: a bad setting or device, `dst` unusable, or no videos under `src`.
        ModelError: the model cannot be loaded.
    """
    src, dst = Path(src), Path(dst)
    shard = shard or Shard()
    routing.check_router(router)
    routing.check_budget(budget)
    check_coder(coder)
    check_chunk_frames(chunk_frames)
    check_refine(refine)
    if not src.is_dir():
        raise InfotokError(f"{src}: not a folder")
    if dst.exists() and not dst.is_dir():
        raise InfotokError(f"{dst}: exists and is not a folder")
    if not dst.parent.is_dir():
        raise InfotokError(f"{dst.parent}: output folder does not exist")
    files = find_dataset_videos(src)
    if not files:
        raise VideoError(
            f"{src}: no video files in it or below (a folder of images is one video: "
            "give an output file.itok)"
        )
    device = _device(device, shard)
    resolve_device(device)  # an unknown or absent device fails here, not once per file
    loaded = as_model(model)
    loaded.check_encodes()  # a decoder file fails here, once, before the folder is made
    chosen_threads = _threads(threads, shard)
    if chosen_threads is not None:
        torch.set_num_threads(chosen_threads)
    dst.mkdir(exist_ok=True)
    settings = EncodeSettings(budget, router, coder, chunk_frames, audio, key_interval, refine)
    encoder = _Encoder(src, dst, settings, loaded, device, bf16, force)
    claimed: dict[Path, Path] = {}
    owners = [claimed.setdefault(rel.with_suffix(STREAM_SUFFIX), rel) for rel in files]
    mine = range(shard.rank, len(files), shard.world)
    if shard.world > 1:
        # Joined before the work, so a broken job setup fails before hours of encoding.
        dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
    try:
        entries: list[ManifestEntry] = []
        for i in mine:
            claimed_by = owners[i] if owners[i] != files[i] else None
            entries.append(encoder(files[i], claimed_by))
            if tick:
                tick(entries[-1], len(mine))
        if shard.world > 1:
            entries = _gather(entries, shard)
    finally:
        if shard.world > 1:
            dist.destroy_process_group()
    result = DatasetResult(src, dst, None, shard.world, entries)
    if shard.rank == 0:
        result.manifest = dst / MANIFEST
        _write_manifest(result.manifest, result, settings, loaded)
    return result


def _gather(entries: list[ManifestEntry], shard: Shard) -> list[ManifestEntry]:
    """Every rank's entries on rank 0, in file order (this rank's own elsewhere)."""
    shares: list[list[ManifestEntry] | None] = [None] * shard.world
    dist.gather_object(entries, shares if shard.rank == 0 else None, dst=0)
    if shard.rank != 0:
        return entries
    return sorted((e for share in shares for e in share or []), key=lambda e: e.source)


def _write_manifest(
    path: Path, result: DatasetResult, settings: EncodeSettings, model: LoadedModel
) -> None:
    """`manifest.json`, replaced whole (it describes the folder as this run leaves it)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "source": str(result.src),
        "settings": {**asdict(settings), "model": model.name, "model_hash": model.sha256.hex()},
        "processes": result.processes,
        "encoded": result.count("encoded"),
        "skipped": result.count("skipped"),
        "failed": result.count("failed"),
        "files": [asdict(e) for e in result.entries],
    }
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
