"""COCO 2017 download: streamed, resumable, checksummed, safely extracted and idempotent.

`download` fetches one URL into `dest` (via `dest.part`, resumed with HTTP Range), `extract_zip` unpacks one
archive without letting any entry escape its target, and `prepare_coco2017` does both for the official
archives and writes a small JSON manifest. Downstream DVC stages depend on that manifest and never on the
118k-file image tree: hashing such a tree makes every no-op `dvc repro` take 13-35 s
(shared/reference/dvc-mlflow.md §1.6 and §6).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

log = logging.getLogger(__name__)

COCO_BASE_URL = "http://images.cocodataset.org"


@dataclass(frozen=True)
class Archive:
    key: str  # "train" | "val" | "annotations": what `--only` selects
    url_path: str  # relative to the base URL, e.g. "zips/val2017.zip"
    md5: str  # hex digest of the whole archive
    size: int  # bytes

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url_path).name


# Official archives. MD5s as published by PaddlePaddle/PaddleDetection (ppdet/utils/download.py,
# DATASETS["coco"]) and, identically, intel/neural-compressor (examples/.../maskrcnn/download_dataset.sh).
# Byte sizes from tensorflow/datasets (tensorflow_datasets/url_checksums/coco2017.txt, which also gives
# SHA-256s), consistent with the 18 GB / 778 MB / 241 MB that dmlc/gluon-cv's COCO tutorial lists next to
# its SHA-1s (train 10ad6236..., val 4950dc9d..., annotations 8551ee4b...; scripts/datasets/mscoco.py).
COCO2017_ARCHIVES = (
    Archive("train", "zips/train2017.zip", md5="cced6f7f71b7629ddf16f17bbcfab6b2", size=19_336_861_798),
    Archive("val", "zips/val2017.zip", md5="442b8da7639aecaf257c1dceb8ba8c80", size=815_585_330),
    Archive(
        "annotations",
        "annotations/annotations_trainval2017.zip",
        md5="f4bbac642086de4f52a3fdda2de5fa2c",
        size=252_907_541,
    ),
)

# split -> (image folder, instances file), relative to the root, as the official archives lay them out.
COCO2017_SPLITS = {
    "train": ("train2017", "annotations/instances_train2017.json"),
    "val": ("val2017", "annotations/instances_val2017.json"),
}

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_DRIVE = re.compile(r"^[A-Za-z]:")


class DownloadError(RuntimeError):
    """A download failed for a reason the user has to read: HTTP status, checksum, retries exhausted."""


class ChecksumError(DownloadError):
    """A finished file does not have the expected size or checksum."""


class HostUnreachableError(DownloadError):
    """DNS failure or refused connection: this machine cannot reach the host at all."""


class UnsafeArchiveError(ValueError):
    """A zip entry would be written outside the extraction target, or is a symlink."""


class _Interrupted(Exception):
    """The transfer stopped early (reset, timeout, short body); the caller retries with Range."""


# ---------------------------------------------------------------------------------------------- download


def download(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    expected_size: int | None = None,
    chunk: int = 1 << 20,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 2.0,
) -> Path:
    """Stream `url` into `dest` through `dest.part`, resuming with HTTP Range, then verify and rename.

    Exactly one of `md5` / `sha256` is required. An existing `dest` is verified and returned without any
    HTTP request (a mismatch raises instead of deleting: it may be a hand-placed file). A dropped
    connection is retried `retries` times, each time resuming from what `.part` already holds.

    Raises:
        HostUnreachableError: DNS failure or connection refused.
        DownloadError: HTTP error status (names URL and status), or retries exhausted (`.part` is kept).
        ChecksumError: the finished transfer has the wrong size/checksum (`.part` is deleted).
    """
    algorithm, expected = _expected_digest(md5, sha256)
    dest = Path(dest)
    if dest.exists():
        verify_file(dest, algorithm, expected, expected_size, hint="delete it or replace it with a good copy")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, expected_size, chunk, timeout)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DownloadError(
                    f"{url}: transfer interrupted {retries + 1} times (last: {exc}); the partial file "
                    f"{part} is kept, run again to resume it"
                ) from exc
            log.warning("%s: %s; resuming (retry %d of %d)", dest.name, exc, attempt + 1, retries)
            time.sleep(backoff_s * 2**attempt)
    try:
        verify_file(
            part, algorithm, expected, expected_size, hint=f"it was deleted; run again to re-download {url}"
        )
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _expected_digest(md5: str | None, sha256: str | None) -> tuple[str, str]:
    if (md5 is None) == (sha256 is None):
        raise ValueError("download(): give exactly one of md5= or sha256=")
    return ("md5", md5.lower()) if md5 is not None else ("sha256", sha256.lower())


def _fetch_into(url: str, part: Path, expected_size: int | None, chunk: int, timeout: float) -> None:
    """One HTTP attempt: append the missing bytes of `url` to `part` (or rewrite it when Range is ignored)."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:  # not a prefix of this file: start again
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # already complete; the checksum decides
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        # A fresh opener per call so proxy environment variables are read now, not at first import.
        response = urllib.request.build_opener().open(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # Range Not Satisfiable: `.part` already holds the whole file
            return
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _classify_network_error(url, exc) from exc
    with response:
        if offset and response.status != 206:  # the server ignored Range and sends everything
            log.warning("%s: server ignored the Range request; restarting from byte 0", part.name)
            offset = 0
        elif offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()
            raise _Interrupted(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
        _stream(response, part, offset, chunk)


def _classify_network_error(url: str, exc: BaseException) -> Exception:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror | ConnectionRefusedError):
        host = urllib.parse.urlsplit(url).netloc
        return HostUnreachableError(f"cannot reach {host} ({reason}) while fetching {url}")
    return _Interrupted(f"{type(reason).__name__}: {reason}")


def _stream(response, part: Path, offset: int, chunk: int) -> None:
    """Copy the response body to `part` (appending after `offset` bytes) with a progress bar."""
    length = response.headers.get("Content-Length")
    body_size = int(length) if length is not None else None
    total = offset + body_size if body_size is not None else None
    received = 0
    with (
        open(part, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            desc=part.name.removesuffix(".part"),
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            mininterval=1.0,
        ) as bar,
    ):
        try:
            while block := response.read(chunk):
                out.write(block)
                received += len(block)
                bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
            raise _Interrupted(f"{type(exc).__name__} after {offset + received} bytes") from exc
    # http.client returns b"" (no exception) when the peer closes before Content-Length bytes arrived.
    if body_size is not None and received < body_size:
        raise _Interrupted(f"connection closed after {offset + received} of {total} bytes")


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (a progress bar appears for files over 64 MiB)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.new(algorithm)
    with (
        open(path, "rb") as f,
        tqdm(
            total=size,
            desc=f"{algorithm} {path.name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            mininterval=1.0,
            disable=size < 64 << 20,
        ) as bar,
    ):
        while block := f.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_file(path: Path, algorithm: str, expected: str, expected_size: int | None, *, hint: str) -> None:
    """Raise ChecksumError naming the file, the expected and the actual size/digest; `hint` says what next."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ChecksumError(f"{path}: size mismatch: expected {expected_size} bytes, got {size}; {hint}")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ChecksumError(
            f"{path}: checksum mismatch: expected {algorithm} {expected}, got {actual}; {hint}"
        )


# --------------------------------------------------------------------------------------------- extract


def extract_zip(zip_path: str | Path, target: str | Path, *, checksum: str = "") -> dict:
    """Extract every entry of `zip_path` under `target`, refusing anything that could escape it.

    All entries are validated before anything is written (`../x`, absolute paths, drive letters,
    backslashes and symlink entries raise UnsafeArchiveError). Files are unpacked into
    `target/.tmp-<zip name>`, then each top-level entry is renamed into `target` (replacing a leftover
    of an extraction that died before its marker) and the marker `target/.<zip name>.extracted.json` is
    written last. A marker with the same `checksum` makes the call a no-op.

    Returns:
        the marker dict: archive (zip name), checksum, entries (top-level names), files (count).
    """
    zip_path, target = Path(zip_path), Path(target)
    if is_extracted(target, zip_path.name, checksum):
        return _read_marker(target, zip_path.name)
    tmp = target / f".tmp-{zip_path.name}"
    with zipfile.ZipFile(zip_path) as zf:
        members = [(info, _safe_relpath(info, tmp)) for info in zf.infolist()]  # all checked before writing
        _remove(tmp)  # left by a killed run
        tmp.mkdir(parents=True)
        for info, rel in tqdm(members, desc=f"extract {zip_path.name}", unit="file", mininterval=1.0):
            _extract_member(zf, info, tmp / rel)
    entries = sorted(p.name for p in tmp.iterdir())
    for name in entries:
        _remove(target / name)
        os.replace(tmp / name, target / name)
    tmp.rmdir()
    marker = {
        "archive": zip_path.name,
        "checksum": checksum,
        "entries": entries,
        "files": sum(not info.is_dir() for info, _ in members),
    }
    _write_json_atomic(_marker_path(target, zip_path.name), marker)
    return marker


def _safe_relpath(info: zipfile.ZipInfo, root: Path) -> PurePosixPath:
    """The entry's path relative to `root`, or UnsafeArchiveError if writing it could leave `root`."""
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchiveError(f"zip entry {name!r} is a symlink; symlink entries are refused")
    if name.startswith("/") or "\\" in name or "\x00" in name or _DRIVE.match(name):
        raise UnsafeArchiveError(f"zip entry {name!r} is absolute or not a plain relative POSIX path")
    rel = PurePosixPath(name)
    resolved = (root / rel).resolve()
    if ".." in rel.parts or not resolved.is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"zip entry {name!r} would be written outside the target")
    return rel


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    # "xb" (O_CREAT|O_EXCL) never writes through an existing file or link; the zip's CRC is checked on read.
    with zf.open(info) as src, open(dest, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def is_extracted(target: Path, zip_name: str, checksum: str) -> bool:
    """True when `target` holds a finished extraction of `zip_name` with this archive checksum."""
    marker = _read_marker(Path(target), zip_name)
    return (
        marker is not None
        and marker.get("checksum") == checksum
        and all((Path(target) / e).exists() for e in marker.get("entries", []))
    )


def _marker_path(target: Path, zip_name: str) -> Path:
    return target / f".{zip_name}.extracted.json"


def _read_marker(target: Path, zip_name: str) -> dict | None:
    try:
        return json.loads(_marker_path(target, zip_name).read_text())
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_json_atomic(path: Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- COCO 2017


def prepare_coco2017(
    root: str | Path,
    *,
    manifest_path: str | Path | None = None,
    base_url: str = COCO_BASE_URL,
    archives: tuple[Archive, ...] = COCO2017_ARCHIVES,
    archives_dir: str | Path | None = None,
    only: list[str] | tuple[str, ...] | None = None,
    timeout: float = 60.0,
    retries: int = 3,
) -> dict:
    """Download (or find), verify and extract the COCO 2017 archives under `root`; write the manifest.

    Idempotent: an archive whose extraction marker carries its MD5 is skipped without any HTTP request,
    and a verified zip already in `archives_dir` (default `root/zips`; downloads land there too) is used
    instead of downloading. `only` selects archive keys; asking for a split also brings the annotations,
    since a split is unusable without them. The manifest covers every split that is fully extracted.

    Returns:
        the manifest dict, also written to `manifest_path` (default `root/manifest.json`).
    """
    root = Path(root)
    archives_dir = Path(archives_dir) if archives_dir is not None else root / "zips"
    for archive in _select(archives, only):
        checksum = f"md5:{archive.md5}"
        if is_extracted(root, archive.filename, checksum):
            log.info("%s: already extracted under %s, skipping", archive.filename, root)
            continue
        url = f"{base_url.rstrip('/')}/{archive.url_path}"
        try:
            zip_path = download(
                url,
                archives_dir / archive.filename,
                md5=archive.md5,
                expected_size=archive.size,
                timeout=timeout,
                retries=retries,
            )
        except HostUnreachableError as exc:
            raise HostUnreachableError(_offline_help(exc, _select(archives, only), archives_dir)) from exc
        extract_zip(zip_path, root, checksum=checksum)
    manifest = build_manifest(root, archives)
    _write_json_atomic(Path(manifest_path) if manifest_path is not None else root / "manifest.json", manifest)
    return manifest


def _select(archives: tuple[Archive, ...], only) -> tuple[Archive, ...]:
    if not only:
        return tuple(archives)
    keys = set(only) | ({"annotations"} if set(only) & set(COCO2017_SPLITS) else set())
    unknown = keys - {a.key for a in archives}
    if unknown:
        raise ValueError(f"unknown archive(s) {sorted(unknown)}; choose from {[a.key for a in archives]}")
    return tuple(a for a in archives if a.key in keys)


def _offline_help(exc: HostUnreachableError, archives: tuple[Archive, ...], archives_dir: Path) -> str:
    lines = [f"{exc}.", "This machine cannot reach the archive host. Download these on a machine that can:"]
    lines += [f"  {COCO_BASE_URL}/{a.url_path}  (md5 {a.md5}, {a.size} bytes)" for a in archives]
    lines += [
        f"then copy them into {archives_dir}/ or any folder DIR and run",
        "  python -m pipeline.download_coco --archives-dir DIR",
        "(each archive is verified against its MD5 before it is extracted).",
    ]
    return "\n".join(lines)


def build_manifest(root: Path, archives: tuple[Archive, ...]) -> dict:
    """Small, deterministic description of the extracted tree: what downstream DVC stages depend on.

    Paths are relative to `root`; a split appears once its images and the annotations are extracted.
    """
    root = Path(root)
    done = {a.key: a for a in archives if is_extracted(root, a.filename, f"md5:{a.md5}")}
    splits = {}
    for split, (image_dir, ann_file) in COCO2017_SPLITS.items():
        if split in done and "annotations" in done:
            splits[split] = {
                "image_dir": image_dir,
                "ann_file": ann_file,
                "num_images": _count_images(root / image_dir),
                "ann_sha256": file_digest(root / ann_file, "sha256"),
            }
    return {
        "dataset": "coco2017",
        "root": root.as_posix(),
        "splits": splits,
        "archives": {
            a.filename: {"md5": a.md5, "size": a.size, "url_path": a.url_path} for a in done.values()
        },
    }


def _count_images(image_dir: Path) -> int:
    with os.scandir(image_dir) as it:  # scandir: ~0.1 s for train2017's 118k entries
        return sum(1 for e in it if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES))
