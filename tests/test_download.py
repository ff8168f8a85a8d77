"""tood/data/download.py against a local HTTP server on 127.0.0.1 serving small COCO-like archives made here."""

import hashlib
import io
import json
import random
import socket
import stat
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from pipeline.download_coco import main
from tood.data.download import (
    Archive,
    ChecksumError,
    DownloadError,
    HostUnreachableError,
    UnsafeArchiveError,
    download,
    extract_zip,
    prepare_coco2017,
)

# ------------------------------------------------------------------------------------------ fixtures


@dataclass
class ServerState:
    files: dict[str, bytes]  # url path -> body
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cuts: dict[str, list[int]] = field(default_factory=dict)  # path -> bytes to send before dropping, per GET
    reset: bool = False  # drop with a TCP RST instead of a clean close
    ignore_range: bool = False
    status: dict[str, int] = field(default_factory=dict)  # path -> forced error status


def _handler(state: ServerState):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append((self.path, self.headers.get("Range")))
            data = state.files.get(self.path)
            if self.path in state.status or data is None:
                self.send_error(state.status.get(self.path, 404))
                return
            start = 0
            if self.headers.get("Range") and not state.ignore_range:
                start = int(self.headers["Range"].removeprefix("bytes=").removesuffix("-"))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cuts = state.cuts.get(self.path)
            if cuts:
                self.wfile.write(data[start : start + cuts.pop(0)])
                self.wfile.flush()
                if state.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def server():
    """Yields (state, base_url); the test fills state.files."""
    state = ServerState(files={})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _jpeg(seed: int) -> bytes:
    noise = random.Random(seed).randbytes(48 * 48 * 3)  # incompressible: a few KB per image
    buf = io.BytesIO()
    Image.frombytes("RGB", (48, 48), noise).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _instances(image_ids: list[int]) -> bytes:
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 48, "height": 48} for i in image_ids]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}
            for i in image_ids]  # fmt: skip
    return json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    ).encode()


@pytest.fixture
def coco(server):
    """A tiny COCO 2017 look-alike served at the official relative paths.

    Yields (state, base_url, archives, annotation jsons by split)."""
    state, base_url = server
    anns = {"train": _instances([1, 2, 3]), "val": _instances([11, 12])}
    zips = {
        "train": _zip({f"train2017/{i:012d}.jpg": _jpeg(i) for i in (1, 2, 3)}),
        "val": _zip({f"val2017/{i:012d}.jpg": _jpeg(i) for i in (11, 12)}),
        "annotations": _zip({f"annotations/instances_{s}2017.json": anns[s] for s in anns}),
    }
    paths = {"train": "zips/train2017.zip", "val": "zips/val2017.zip",
             "annotations": "annotations/annotations_trainval2017.zip"}  # fmt: skip
    archives = tuple(Archive(k, paths[k], hashlib.md5(zips[k]).hexdigest(), len(zips[k])) for k in zips)
    state.files.update({f"/{paths[k]}": zips[k] for k in zips})
    return state, base_url, archives, anns


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- download + extract + manifest


def test_prepare_downloads_verifies_extracts_and_writes_manifest(coco, tmp_path):
    state, base_url, archives, anns = coco
    root, manifest_path = tmp_path / "coco", tmp_path / "coco.manifest.json"
    manifest = prepare_coco2017(root, manifest_path=manifest_path, base_url=base_url, archives=archives)

    assert len(state.requests) == 3 and all(rng is None for _, rng in state.requests)
    assert json.loads(manifest_path.read_text()) == manifest
    assert set(manifest["splits"]) == {"train", "val"}
    val = manifest["splits"]["val"]
    assert val["image_dir"] == "val2017" and val["ann_file"] == "annotations/instances_val2017.json"
    assert val["num_images"] == 2 and manifest["splits"]["train"]["num_images"] == 3
    assert val["ann_sha256"] == hashlib.sha256(anns["val"]).hexdigest()
    assert manifest["archives"]["val2017.zip"]["md5"] == archives[1].md5
    assert (root / "train2017" / "000000000003.jpg").read_bytes() == _jpeg(3)
    assert not list(root.glob(".tmp-*")) and not list(root.rglob("*.part"))


def test_prepare_is_idempotent_without_http(coco, tmp_path):
    state, base_url, archives, _ = coco
    root = tmp_path / "coco"
    first = prepare_coco2017(root, base_url=base_url, archives=archives)
    n = len(state.requests)
    assert prepare_coco2017(root, base_url=base_url, archives=archives) == first
    for zip_path in (root / "zips").iterdir():  # markers alone are enough once extracted
        zip_path.unlink()
    assert prepare_coco2017(root, base_url=base_url, archives=archives) == first
    assert len(state.requests) == n == 3


def test_only_val_brings_annotations_and_manifest_has_val(coco, tmp_path):
    state, base_url, archives, _ = coco
    manifest = prepare_coco2017(tmp_path / "coco", base_url=base_url, archives=archives, only=["val"])
    assert sorted(p for p, _ in state.requests) == [
        "/annotations/annotations_trainval2017.zip",
        "/zips/val2017.zip",
    ]
    assert set(manifest["splits"]) == {"val"}


def test_archives_dir_with_prefetched_zips_needs_no_network(coco, tmp_path):
    state, _, archives, _ = coco
    archives_dir = tmp_path / "by_hand"
    archives_dir.mkdir()
    for a in archives:
        (archives_dir / a.filename).write_bytes(state.files[f"/{a.url_path}"])
    offline = f"http://127.0.0.1:{_closed_port()}"
    manifest = prepare_coco2017(
        tmp_path / "coco", base_url=offline, archives=archives, archives_dir=archives_dir
    )
    assert set(manifest["splits"]) == {"train", "val"} and state.requests == []


# ----------------------------------------------------------------------------------------- resume / retry


@pytest.mark.parametrize("reset", [False, True], ids=["eof", "rst"])
def test_interrupted_transfer_resumes_with_range(coco, tmp_path, reset):
    state, base_url, archives, _ = coco
    val = archives[1]
    data = state.files[f"/{val.url_path}"]
    state.cuts[f"/{val.url_path}"], state.reset = [len(data) // 3], reset
    dest = download(f"{base_url}/{val.url_path}", tmp_path / "val2017.zip", md5=val.md5,
                    expected_size=val.size, chunk=1024, backoff_s=0)  # fmt: skip
    assert dest.read_bytes() == data and not (tmp_path / "val2017.zip.part").exists()
    (_, first_range), (_, second_range) = state.requests
    cut = len(data) // 3
    assert first_range is None
    if not reset:
        assert second_range == f"bytes={cut}-"
    else:  # a RST may discard bytes the client had not read yet: it resumes from whatever it wrote
        assert second_range is None or 0 < int(second_range.removeprefix("bytes=").removesuffix("-")) <= cut


def test_resume_across_runs_and_416_when_part_is_complete(coco, tmp_path):
    state, base_url, archives, _ = coco
    val = archives[1]
    data, url = state.files[f"/{val.url_path}"], f"{base_url}/{val.url_path}"
    (tmp_path / "a.zip.part").write_bytes(data[:1000])  # left by an earlier, killed run
    assert download(url, tmp_path / "a.zip", md5=val.md5).read_bytes() == data
    assert state.requests[-1] == (f"/{val.url_path}", "bytes=1000-")

    (tmp_path / "b.zip.part").write_bytes(data)  # complete but never renamed; size unknown -> server says 416
    assert download(url, tmp_path / "b.zip", md5=val.md5).read_bytes() == data
    assert state.requests[-1][1] == f"bytes={len(data)}-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.zip"]


def test_server_ignoring_range_restarts_from_zero(coco, tmp_path):
    state, base_url, archives, _ = coco
    val = archives[1]
    data = state.files[f"/{val.url_path}"]
    (tmp_path / "val2017.zip.part").write_bytes(data[:1000])
    state.ignore_range = True
    dest = download(
        f"{base_url}/{val.url_path}", tmp_path / "val2017.zip", md5=val.md5, expected_size=val.size
    )
    assert state.requests[-1][1] == "bytes=1000-" and dest.read_bytes() == data


def test_retries_are_bounded_and_keep_the_part(coco, tmp_path):
    state, base_url, archives, _ = coco
    val = archives[1]
    state.cuts[f"/{val.url_path}"] = [100] * 10
    with pytest.raises(DownloadError, match="interrupted 3 times") as info:
        download(f"{base_url}/{val.url_path}", tmp_path / "val2017.zip", md5=val.md5, retries=2, backoff_s=0)
    assert "run again to resume" in str(info.value)
    assert len(state.requests) == 3 and (tmp_path / "val2017.zip.part").stat().st_size == 300


# ---------------------------------------------------------------------------------------- failure modes


def test_checksum_mismatch_is_clear_and_leaves_nothing(coco, tmp_path):
    _, base_url, archives, _ = coco
    val = archives[1]
    actual = val.md5
    with pytest.raises(ChecksumError) as info:
        download(f"{base_url}/{val.url_path}", tmp_path / "val2017.zip", md5="0" * 32)
    msg = str(info.value)
    assert "val2017.zip" in msg and "0" * 32 in msg and actual in msg
    assert list(tmp_path.iterdir()) == []


def test_corrupt_part_is_deleted_after_resume(coco, tmp_path):
    _, base_url, archives, _ = coco
    val = archives[1]
    (tmp_path / "val2017.zip.part").write_bytes(b"x" * 1000)  # not a prefix of the real file
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download(f"{base_url}/{val.url_path}", tmp_path / "val2017.zip", md5=val.md5, expected_size=val.size)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_names_url_and_status(server, tmp_path, status):
    state, base_url = server
    state.status["/zips/val2017.zip"] = status
    url = f"{base_url}/zips/val2017.zip"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "val2017.zip", md5="0" * 32)
    assert f"HTTP {status}" in str(info.value) and url in str(info.value)
    assert list(tmp_path.iterdir()) == [] and len(state.requests) == 1


def test_offline_connection_refused_explains_how_to_place_archives(coco, tmp_path):
    _, _, archives, _ = coco
    host = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(HostUnreachableError) as info:
        prepare_coco2017(tmp_path / "coco", base_url=f"http://{host}", archives=archives, retries=0)
    msg = str(info.value)
    assert f"cannot reach {host}" in msg and "--archives-dir" in msg
    assert all(a.filename in msg and a.md5 in msg for a in archives)


def test_offline_dns_failure(monkeypatch, tmp_path):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(HostUnreachableError, match="cannot reach images.cocodataset.org"):
        download("http://images.cocodataset.org/zips/val2017.zip", tmp_path / "v.zip", md5="0" * 32)


def test_cli_offline_exits_1_with_help(tmp_path, capsys):
    argv = ["--root", str(tmp_path / "coco"), "--manifest", str(tmp_path / "m.json"),
            "--base-url", f"http://127.0.0.1:{_closed_port()}", "--only", "val"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "--archives-dir" in err and "val2017.zip" in err
    assert not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------------------------------- extraction


def _symlink_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/file.txt", b"fine")
        link = zipfile.ZipInfo("ok/link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "../../escape.txt")


def _named_zip(name: str):
    def make(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("ok/file.txt", b"fine")
            info = zipfile.ZipInfo("placeholder")
            info.filename = name  # set after construction so nothing normalises it
            zf.writestr(info, b"evil")

    return make


@pytest.mark.parametrize(
    "make_zip",
    [_named_zip("../escape.txt"), _named_zip("ok/../../escape.txt"), _named_zip("/tmp/tood_test_escape_abs.txt"),
     _named_zip("C:/escape.txt"), _named_zip("..\\escape.txt"), _symlink_zip],
    ids=["dotdot", "nested-dotdot", "absolute", "drive", "backslash", "symlink"],
)  # fmt: skip
def test_unsafe_entries_are_rejected_and_nothing_is_written(tmp_path, make_zip):
    zip_path, target = tmp_path / "evil.zip", tmp_path / "out" / "target"
    make_zip(zip_path)
    with pytest.raises(UnsafeArchiveError):
        extract_zip(zip_path, target)
    assert _files_under(tmp_path) == [zip_path]  # nothing in target, nothing next to it
    assert not Path("/tmp/tood_test_escape_abs.txt").exists()


def test_extraction_marker_skips_repeat_and_checksum_change_redoes(tmp_path, monkeypatch):
    zip_path, target = tmp_path / "a.zip", tmp_path / "root"
    zip_path.write_bytes(_zip({"d/x.txt": b"1", "d/sub/y.txt": b"2"}))
    marker = extract_zip(zip_path, target, checksum="md5:aaa")
    assert marker["entries"] == ["d"] and marker["files"] == 2
    assert (target / ".a.zip.extracted.json").exists() and (
        target / "d" / "sub" / "y.txt"
    ).read_bytes() == b"2"

    (target / "d" / "x.txt").write_bytes(b"edited")  # a finished extraction is not repeated
    assert extract_zip(zip_path, target, checksum="md5:aaa") == marker
    assert (target / "d" / "x.txt").read_bytes() == b"edited"

    extract_zip(zip_path, target, checksum="md5:bbb")  # a new archive replaces the old tree
    assert (target / "d" / "x.txt").read_bytes() == b"1" and not list(target.glob(".tmp-*"))
