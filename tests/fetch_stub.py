"""A tiny local WMTS stub for fetch tests and the fetch benchmark (127.0.0.1 only).

Serves a deterministic 256x256 JPEG per (layer, z, y, x) in both EOX URL forms
(RESTful `/wmts/1.0.0/{layer}/default/{tms}/{z}/{y}/{x}.jpg` and KVP `/wmts?...`),
and injects faults per tile and attempt: `faults[(layer, z, y, x)] = ["503", "timeout", ...]`
is consumed one entry per request of that tile; `missing` tiles always answer 404;
`refuse_all` answers 403 to everything; `reset_all` drops every connection without an
answer (a network-level failure). `429` answers with `Retry-After: 1`, `429:<value>` with
that value, `429:date+<s>` (or `date-<s>`) with the HTTP date `s` seconds from (or before) now.

It records when each request arrived (`starts`, monotonic seconds) and the most requests
it was serving at once (`max_in_flight`), so tests measure the client's politeness on the
wire instead of trusting its settings."""

from __future__ import annotations

import email.utils
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

TileId = tuple[str, int, int, int]
_TILE_CACHE: dict[TileId, bytes] = {}


def tile_jpeg(layer: str, z: int, y: int, x: int) -> bytes:
    """Deterministic smooth 256x256 JPEG (an upscaled seeded 8x8 colour grid)."""
    tid = (layer, z, y, x)
    if tid not in _TILE_CACHE:
        rng = np.random.default_rng(zlib.crc32(repr(tid).encode()))
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize((256, 256), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=85)
        _TILE_CACHE[tid] = buf.getvalue()
    return _TILE_CACHE[tid]


def parse_tile_path(raw: str) -> TileId | None:
    parts = urlsplit(raw)
    seg = parts.path.strip("/").split("/")
    if len(seg) == 8 and seg[:2] == ["wmts", "1.0.0"] and seg[7].endswith(".jpg"):
        return seg[2], int(seg[5]), int(seg[6]), int(seg[7][:-4])
    if parts.path == "/wmts":
        q = {k.lower(): v[0] for k, v in parse_qs(parts.query).items()}
        try:
            return q["layer"], int(q["tilematrix"]), int(q["tilerow"]), int(q["tilecol"])
        except (KeyError, ValueError):
            return None
    return None


class StubWmts:
    """Context manager running the stub on 127.0.0.1:<ephemeral>."""

    def __init__(
        self,
        faults: dict[TileId, list[str]] | None = None,
        missing: set[TileId] | frozenset[TileId] = frozenset(),
        refuse_all: bool = False,
        reset_all: bool = False,
        latency_s: float = 0.0,
        hang_s: float = 1.5,
    ) -> None:
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.missing = set(missing)
        self.refuse_all = refuse_all
        self.reset_all = reset_all
        self.starts: list[float] = []  # arrival time of every request
        self.in_flight = 0
        self.max_in_flight = 0
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.hits: Counter[TileId] = Counter()
        self.log: list[tuple[TileId | None, str]] = []  # (tile, what was served)
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def restful(self) -> str:
        return self.base_url + "/wmts/1.0.0/{layer}/default/g/{z}/{y}/{x}.jpg"

    @property
    def kvp(self) -> str:
        return (
            self.base_url + "/wmts?layer={layer}&style=default&tilematrixset=GoogleMapsCompatible&Service=WMTS"
            "&Request=GetTile&Version=1.0.0&Format=image%2Fjpeg&TileMatrix={z}&TileCol={x}&TileRow={y}"
        )

    def __enter__(self) -> StubWmts:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def total_hits(self) -> int:
        with self.lock:
            return sum(self.hits.values())

    def _next_action(self, tid: TileId | None) -> str:
        with self.lock:
            if tid is not None:
                self.hits[tid] += 1
            if tid is None:
                action = "400"
            elif self.reset_all:
                action = "reset"
            elif self.refuse_all:
                action = "403"
            elif tid in self.missing:
                action = "404"
            elif self.faults.get(tid):
                action = self.faults[tid].pop(0)
            else:
                action = "ok"
            self.log.append((tid, action))
        return action

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body in two writes meet delayed ACKs (40 ms)
            wbufsize = 1 << 16  # one write per response; handle_one_request flushes it

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with stub.lock:
                    stub.starts.append(time.monotonic())
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    stub.user_agents.add(self.headers.get("User-Agent", ""))
                try:
                    if stub.latency_s:
                        time.sleep(stub.latency_s)
                    tid = parse_tile_path(self.path)
                    action = stub._next_action(tid)
                    try:
                        self._act(action, tid)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def _act(self, action: str, tid: TileId | None) -> None:
                if action == "ok" and tid is not None:
                    self._send(200, tile_jpeg(*tid), "image/jpeg")
                elif action.startswith("429"):
                    value = action.partition(":")[2] or "1"
                    if value.startswith("date"):  # date+3600, date-60
                        value = email.utils.formatdate(time.time() + float(value[4:]), usegmt=True)
                    self._send(429, b"slow down", "text/plain", {"Retry-After": value})
                elif action == "timeout":
                    time.sleep(stub.hang_s)
                    self.close_connection = True
                    self._send(200, tile_jpeg(*tid), "image/jpeg") if tid else None
                elif action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                elif action == "truncated" and tid is not None:
                    self._send(200, tile_jpeg(*tid)[: len(tile_jpeg(*tid)) // 2], "image/jpeg")
                elif action == "html":
                    self._send(200, b"<html><body>Service busy</body></html>", "text/html; charset=utf-8")
                elif action == "redirect_offhost":
                    self._send(302, b"", "text/plain", {"Location": "http://example.invalid/tile.jpg"})
                else:
                    self._send(int(action), b"error", "text/plain")

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass

        return Handler
