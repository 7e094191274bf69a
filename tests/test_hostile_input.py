"""Hostile input through the command line: each bad file ends the command with one line
on stderr and exit code 1, never a traceback, and nothing is decoded before it is bounded.

The commands run as subprocesses (`python -m earthloc.cli`), as a user would run them."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from earthloc.retrieval.index import INDEX_FORMAT
from pipeline.tools.localize import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "earthloc.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    err = proc.stderr
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err[-2000:]
    for w in words:
        assert w in err, (w, err)
    return err


def png_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height (CRC fixed): what a decompression bomb's
    header looks like, without the megabytes it would take to make a real one."""
    data = bytearray(png_bytes((1, 1)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index directory whose index.faiss is cut in half."""
    import faiss

    d = tmp_path_factory.mktemp("index")
    index = faiss.IndexFlatIP(8)
    index.add(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    faiss.write_index(index, str(d / "index.faiss"))
    whole = (d / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(whole[: len(whole) // 2])
    pd.DataFrame({"db_index": [0, 1], "region_id": ["09_0210_0118", "09_0210_0120"]}).to_parquet(d / "regions.parquet")
    (d / "meta.json").write_text(json.dumps({"format": INDEX_FORMAT, "rotations": [0, 90, 180, 270]}))
    return d


LOCALIZE_CASES = {
    "wide.png": (lambda: png_bytes((50_000, 1)), [f"{MAX_ASPECT_RATIO:g}:1"]),
    "line.png": (lambda: png_bytes((1_000_000, 1)), [f"{MAX_ASPECT_RATIO:g}:1"]),
    "big.png": (lambda: png_claiming(10_000, 10_000), [f"{MAX_IMAGE_PIXELS:,}"]),
    "bomb.png": (lambda: png_claiming(20_000, 20_000), [f"{MAX_IMAGE_PIXELS:,}"]),  # Pillow's DecompressionBombError
    "text.jpg": (lambda: b"not an image at all", ["not a readable image"]),
}


def _localize_args(image: Path, index_dir: Path, tmp_path: Path) -> list[str]:
    return ["localize", str(image), "--params", str(ROOT / "params.yaml"), "--index", str(index_dir),
            "--model", str(tmp_path / "no-model.pt")]  # fmt: skip


@pytest.mark.parametrize("name", ["wide.png", "bomb.png"])
def test_localize_bounds_the_image_first(tmp_path: Path, index_dir: Path, name: str) -> None:
    make, words = LOCALIZE_CASES[name]
    image = tmp_path / name
    image.write_bytes(make())
    assert image.stat().st_size < 20_000  # small files: what they ask the decoder for is the danger
    proc = run_cli(*_localize_args(image, index_dir, tmp_path), cwd=tmp_path)
    assert_one_line_error(proc, "earthloc localize: error:", str(image), *words)


@pytest.mark.parametrize("name", sorted(LOCALIZE_CASES))
def test_localize_image_bounds_in_process(tmp_path: Path, index_dir: Path, name: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Every case through `cli.main` (the subprocess test above runs two of them: a
    Python start with torch costs seconds each)."""
    from earthloc import cli

    make, words = LOCALIZE_CASES[name]
    image = tmp_path / name
    image.write_bytes(make())
    assert cli.main(_localize_args(image, index_dir, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("earthloc localize: error:"), err
    assert all(w in err for w in words), err


def test_localize_truncated_index(tmp_path: Path, index_dir: Path) -> None:
    image = tmp_path / "ok.png"
    Image.new("RGB", (64, 48)).save(image)
    proc = run_cli("localize", str(image), "--params", str(ROOT / "params.yaml"), "--index", str(index_dir),
                   "--model", str(tmp_path / "no-model.pt"), cwd=tmp_path)  # fmt: skip
    assert_one_line_error(proc, "index.faiss", "not a readable faiss index")


def zip_pt(path: Path, pickle_bytes: bytes, compression: int = zipfile.ZIP_STORED) -> Path:
    """A .pt in torch.save's layout (archive/data.pkl + archive/version)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", "3\n")
    return path


# PROTO 2, EMPTY_DICT, EMPTY_LIST (the key), EMPTY_LIST (the value), SETITEM, STOP
UNHASHABLE_KEY = b"\x80\x02}]]s."


@pytest.mark.parametrize("kind", ["unhashable_key", "bomb", "truncated", "junk", "directory"])
def test_audit_bad_pt_is_one_line(tmp_path: Path, kind: str) -> None:
    p = tmp_path / f"{kind}.pt"
    if kind == "unhashable_key":
        zip_pt(p, UNHASHABLE_KEY)
        words = ["not a readable .pt file", "unhashable"]
    elif kind == "bomb":
        zip_pt(p, b"\x80\x02" + bytes(64 << 20), zipfile.ZIP_DEFLATED)  # 64 MiB in about 64 KB
        assert p.stat().st_size < 1 << 20
        words = ["inflates", "limit of"]
    elif kind == "truncated":
        zip_pt(p, b"\x80\x02}q\x00(X\x05\x00\x00\x00abc")
        words = ["not a readable .pt file"]
    elif kind == "junk":
        p.write_bytes(b"\x00\x01junk" * 100)
        words = ["not a readable .pt file"]
    else:
        p.mkdir()
        words = [str(p)]
    proc = run_cli("audit", str(p), cwd=tmp_path)
    assert_one_line_error(proc, "earthloc audit: error:", *words)


def test_queries_binary_file_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "meta.csv"
    p.write_bytes(b"\xff\xfe\x00L\x00L\x00_\x00\n\x00")
    proc = run_cli("queries", str(p), "--params", str(ROOT / "params.yaml"), "--out", str(tmp_path / "q.parquet"),
                   "--rejected", str(tmp_path / "r.csv"), cwd=tmp_path)  # fmt: skip
    assert_one_line_error(proc, "earthloc queries: error:", "not UTF-8")


def test_error_messages_stay_on_one_line(tmp_path: Path) -> None:
    """A file name holding a line break is shown escaped, not as a second line."""
    p = tmp_path / "two\nlines.pt"
    proc = run_cli("audit", str(p), cwd=tmp_path)
    assert_one_line_error(proc, "two\\nlines.pt", "no such file")
