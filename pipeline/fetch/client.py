"""A polite WMTS GetTile client (docs/sources.md, "Politeness").

Why each rule exists:
- one `requests.Session` with a bounded pool: keep-alive saves a TLS handshake per tile,
  and the pool never opens more sockets than the concurrency cap;
- an identifying User-Agent with a contact, so the operator can reach us instead of
  blocking us;
- request *starts* spaced by `min_interval_s` per host and at most `max_concurrency`
  requests in flight: EOX throttles bursts, not averages;
- retries are an explicit loop (documented here, not hidden in urllib3's `Retry`) because
  retry decisions depend on the *validated body* too (a 200 carrying HTML or a truncated
  JPEG is retried like a 5xx), and 429 must honour `Retry-After`. The adapter itself
  retries nothing. Backoff is exponential with "equal jitter" (half fixed, half random);
- 404 is an answer (the tile does not exist), recorded and never retried;
- redirects are not followed automatically: a redirect to another host (or scheme) is
  refused, a same-host redirect is followed at most once per attempt;
- a source that keeps refusing or cannot be reached (403/429/5xx, connection errors, DNS
  failures and timeouts ending `refusal_limit` consecutive tiles) stops the run with
  `SourceRefusedError` rather than hammering it or waiting out an outage tile by tile;
- the breaker is checked inside the concurrency slot, right before a request is sent, and
  a tile's outcome is counted before its slot is released: once it trips no request starts,
  and at most `max_concurrency - 1` requests are still in flight. A source that answers
  every request 403 therefore sees at most `refusal_limit + max_concurrency - 1` requests.
"""

from __future__ import annotations

import email.utils
import io
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from pipeline import __version__
from pipeline.errors import ConfigError, SourceRefusedError
from pipeline.params import build_config

EOX_RESTFUL = "https://tiles.maps.eox.at/wmts/1.0.0/{layer}/default/g/{z}/{y}/{x}.jpg"
EOX_KVP = (
    "https://s2maps-tiles.eu/wmts?layer={layer}&style=default&tilematrixset=GoogleMapsCompatible"
    "&Service=WMTS&Request=GetTile&Version=1.0.0&Format=image%2Fjpeg&TileMatrix={z}&TileCol={x}&TileRow={y}"
)
EOX_LAYER = "s2cloudless-{year}_3857"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png"})

Status = Literal["ok", "not_found", "failed"]


class TileKey(NamedTuple):
    """One WMTS tile of one year's layer: TileMatrix z, TileRow y, TileCol x."""

    year: int
    z: int
    y: int
    x: int


@dataclass(frozen=True)
class ClientConfig:
    """Everything that shapes the requests; built from the `fetch` params section."""

    url_template: str = EOX_RESTFUL
    layer_template: str = EOX_LAYER
    contact: str = "set fetch.contact in params.yaml"
    max_concurrency: int = 2
    min_interval_s: float = 0.5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 120.0
    retry_after_cap_s: float = 300.0
    refusal_limit: int = 20
    follow_same_host_redirect: bool = True
    tile_size: int = 256

    def __post_init__(self) -> None:
        for name in ("{z}", "{y}", "{x}"):
            if name not in self.url_template:
                raise ConfigError(f"fetch.url_template lacks {name}: {self.url_template!r}")
        if "{layer}" not in self.url_template and "{year}" not in self.url_template:
            raise ConfigError("fetch.url_template needs {layer} or {year}")
        try:
            url = self.url_template.format(layer="L", year=2021, z=0, y=0, x=0)
            self.layer_template.format(year=2021)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"fetch: bad URL or layer template ({exc})") from exc
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"fetch.url_template must be http(s): {self.url_template!r}")
        if self.max_concurrency < 1 or self.max_attempts < 1 or self.refusal_limit < 1:
            raise ConfigError("fetch: max_concurrency, max_attempts and refusal_limit must be >= 1")
        if min(self.min_interval_s, self.backoff_base_s, self.retry_after_cap_s) < 0:
            raise ConfigError("fetch: intervals and backoff must be >= 0")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None, name: str = "fetch.client") -> ClientConfig:
        """From the `fetch.client` section (with the URL, layer and contact of `fetch`
        merged in); an unknown key is an error naming it, never silently dropped."""
        return build_config(cls, sec, name)

    @property
    def user_agent(self) -> str:
        return f"earthloc-pipeline/{__version__} (+{self.contact})"

    def layer(self, year: int) -> str:
        return self.layer_template.format(year=year)

    def url(self, key: TileKey) -> str:
        return self.url_template.format(layer=self.layer(key.year), year=key.year, z=key.z, y=key.y, x=key.x)


@dataclass
class TileResult:
    """Outcome of one tile: `data` holds the validated bytes exactly as served when ok."""

    key: TileKey
    url: str
    status: Status
    attempts: int
    reason: str  # "ok", or the last attempt's reason (http_404, timeout, undecodable, ...)
    data: bytes | None = field(default=None, repr=False)
    history: tuple[str, ...] = ()  # reason of every attempt, in order
    refused: bool = False  # the final failure looks like the server refusing us
    unreachable: bool = False  # the final failure is network-level (connection, DNS, timeout)


# Checks a 200 response: (body, Content-Type) -> None if acceptable, else the reason.
Validator = Callable[[bytes, str], "str | None"]


@dataclass
class UrlResult:
    """Outcome of one plain URL fetch (`WmtsClient.get_url`), like `TileResult` without a key."""

    url: str
    status: Status
    attempts: int
    reason: str
    data: bytes | None = field(default=None, repr=False)
    history: tuple[str, ...] = ()
    refused: bool = False
    unreachable: bool = False


class _Attempt(NamedTuple):
    outcome: Literal["ok", "not_found", "retry", "fatal"]
    reason: str
    data: bytes | None = None
    wait_s: float | None = None  # server-requested wait (Retry-After)
    refused: bool = False
    unreachable: bool = False  # no HTTP answer at all: connection refused or reset, DNS, timeout


class StartSpacer:
    """Thread-safe minimum interval between request starts (one per host).

    Each caller reserves the next free start slot under a lock, then sleeps outside it,
    so N threads produce starts exactly `interval` apart without busy waiting."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if self.interval_s <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval_s
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def validate_tile(data: bytes, content_type: str, tile_size: int) -> str | None:
    """None if `data` is a decodable `tile_size`² image of an image content type, else why not.

    `Image.load()` decodes every pixel, so a truncated JPEG fails here, not later in the mosaic."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype not in IMAGE_TYPES:
        return "bad_content_type"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return "undecodable"
    if size != (tile_size, tile_size):
        return "bad_size"
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WmtsClient:
    """Fetches and validates tiles; safe to share between threads (one per run and process)."""

    def __init__(
        self, cfg: ClientConfig, session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.cfg = cfg
        self._sleep = sleep  # the wait between attempts (backoff, Retry-After); tests record it
        self.session = session or requests.Session()
        # max_retries=0: the adapter retries nothing, the loop in get_tile decides.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=cfg.max_concurrency, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": cfg.user_agent, "Accept": "image/jpeg, image/png"})
        self._slots = threading.BoundedSemaphore(cfg.max_concurrency)
        self._spacers: dict[str, StartSpacer] = {}
        self._lock = threading.Lock()
        self._streak = 0
        self._refusal: str | None = None
        self._rng = random.Random()
        self.requests = 0
        self.bytes = 0
        self.attempt_reasons: Counter[str] = Counter()

    # -- public -------------------------------------------------------------------
    def get_tile(self, key: TileKey) -> TileResult:
        """Fetch one tile with retries; raise `SourceRefusedError` once the source keeps refusing."""
        r = self.get_url(self.cfg.url(key), lambda data, ctype: validate_tile(data, ctype, self.cfg.tile_size))
        return TileResult(key, r.url, r.status, r.attempts, r.reason, r.data, r.history, r.refused, r.unreachable)

    def get_url(self, url: str, validate: Validator) -> UrlResult:
        """Fetch any URL with the same retries, rate limit, redirect rules and refusal breaker
        as tiles (the query-photo fetcher uses it for NASA's photos); `validate` checks a 200
        body, and a rejected body is retried like a 5xx."""
        history: list[str] = []
        for attempt in range(1, self.cfg.max_attempts + 1):
            self._check_refusal()
            # The slot spans the breaker check, the request and, on the last attempt, the
            # breaker's count: no request starts after a trip, and no tile that was already
            # in flight can be counted late (which would let more requests slip in).
            with self._slots:
                self._check_refusal()
                last = self._attempt(url, validate)
                history.append(last.reason)
                final = last.outcome in ("ok", "not_found", "fatal") or attempt == self.cfg.max_attempts
                if final:
                    status: Status = (
                        "ok" if last.outcome == "ok" else ("not_found" if last.outcome == "not_found" else "failed")
                    )
                    result = UrlResult(url, status, len(history), last.reason, last.data, tuple(history),
                                       last.refused, last.unreachable)  # fmt: skip
                    self._note_final(result)
                    return result
            self._sleep(self._delay(attempt, last.wait_s))
        raise AssertionError("unreachable")  # pragma: no cover (max_attempts >= 1)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "bytes": self.bytes, "attempt_reasons": dict(self.attempt_reasons)}

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> WmtsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one HTTP exchange ----------------------------------------------------------
    def _attempt(self, url: str, validate: Validator) -> _Attempt:
        """One validated GET (plus at most one same-host redirect), classified."""
        timeout = (self.cfg.connect_timeout_s, self.cfg.read_timeout_s)
        origin = urlsplit(url)
        for hop in range(2):
            try:
                resp = self._get(url, timeout)
            except requests.Timeout:
                return self._count(_Attempt("retry", "timeout", unreachable=True))
            except requests.RequestException:  # reset, refused, DNS, incomplete body, ...
                return self._count(_Attempt("retry", "connection", unreachable=True))
            if resp.is_redirect or 300 <= resp.status_code < 400:
                target = urljoin(url, resp.headers.get("Location", ""))
                t = urlsplit(target)
                same = (t.scheme, t.netloc) == (origin.scheme, origin.netloc)
                if same and hop == 0 and self.cfg.follow_same_host_redirect:
                    url = target
                    continue
                return self._count(_Attempt("fatal", "redirect_same_host" if same else "redirect_offhost"))
            return self._count(self._classify(resp, validate))
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, url: str, timeout: tuple[float, float]) -> requests.Response:
        """The GET itself (the caller holds a concurrency slot), after this host's start slot."""
        host = urlsplit(url).netloc
        with self._lock:
            spacer = self._spacers.setdefault(host, StartSpacer(self.cfg.min_interval_s))
        spacer.wait()
        self._check_refusal()  # the spacing wait can be long: a trip meanwhile stops this request
        with self._lock:
            self.requests += 1
        resp = self.session.get(url, timeout=timeout, allow_redirects=False)
        _ = resp.content  # read the body inside the slot
        return resp

    def _classify(self, resp: requests.Response, validate: Validator) -> _Attempt:
        code = resp.status_code
        with self._lock:
            self.bytes += len(resp.content)
        if code == 200:
            bad = validate(resp.content, resp.headers.get("Content-Type", ""))
            return _Attempt("retry", bad) if bad else _Attempt("ok", "ok", resp.content)
        if code in (404, 410):
            return _Attempt("not_found", f"http_{code}")
        if code == 429:
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            return _Attempt("retry", "http_429", wait_s=wait, refused=True)
        if code >= 500:
            return _Attempt("retry", f"http_{code}", refused=True)
        # 401/403 and other 4xx: asking again will not help, but they count as refusals.
        return _Attempt("fatal", f"http_{code}", refused=code in (401, 403))

    def _count(self, att: _Attempt) -> _Attempt:
        with self._lock:
            self.attempt_reasons[att.reason] += 1
        return att

    def _delay(self, attempt: int, server_wait: float | None) -> float:
        """Retry-After (capped) when the server gave one, else exponential backoff with jitter."""
        if server_wait is not None:
            return min(server_wait, self.cfg.retry_after_cap_s)
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
        with self._lock:
            return base / 2 + self._rng.uniform(0, base / 2)

    # -- refusal circuit breaker ----------------------------------------------------
    def _note_final(self, result: UrlResult) -> None:
        """Count a tile's outcome toward the breaker: refusals and network-level failures
        extend the streak of consecutive failed tiles, an answer (ok, not found) ends it."""
        with self._lock:
            if result.status == "failed" and (result.refused or result.unreachable):
                self._streak += 1
                if self._streak >= self.cfg.refusal_limit and self._refusal is None:
                    if result.unreachable:
                        self._refusal = (
                            f"tile source unreachable: {self._streak} consecutive tiles ended in "
                            f"{result.reason} after {result.attempts} attempts each (last {result.url}); "
                            "stopping instead of waiting out the outage. Check the network, DNS and "
                            "fetch.url_template, then rerun: finished regions are kept."
                        )
                    else:
                        self._refusal = (
                            f"tile source refuses us: {self._streak} consecutive tiles ended in "
                            f"{result.reason} (last {result.url}); stopping instead of retrying. "
                            "Check the URL, the User-Agent contact and the rate limits in params (fetch)."
                        )
            elif result.status in ("ok", "not_found"):
                self._streak = 0
        self._check_refusal()

    def _check_refusal(self) -> None:
        if self._refusal is not None:
            raise SourceRefusedError(self._refusal)


_SHARED: dict[tuple[str, ClientConfig], WmtsClient] = {}
_SHARED_LOCK = threading.Lock()
_ENDED: deque[str] = deque(maxlen=1024)  # runs whose clients were released in this process


def shared_client(token: str, cfg: ClientConfig) -> WmtsClient:
    """The one client of run `token` in this process, so all worker threads share its
    session, rate limit, concurrency cap and refusal state.

    A task that starts after its run released the clients (the driver stopped on a
    refusal and cancelled, but the task was already queued) gets a stopped client: a
    fresh one would forget the breaker and send requests for a run that has ended."""
    with _SHARED_LOCK:
        client = _SHARED.get((token, cfg))
        if client is None:
            client = WmtsClient(cfg)
            if token in _ENDED:
                client._refusal = f"fetch run {token} has ended; no more requests"
                return client
            _SHARED[(token, cfg)] = client
        return client


def release_shared(token: str) -> dict[str, Any]:
    """Close run `token`'s clients in this process and return their merged stats."""
    total: dict[str, Any] = {"requests": 0, "bytes": 0, "attempt_reasons": Counter()}
    with _SHARED_LOCK:
        _ENDED.append(token)
        for k in [k for k in _SHARED if k[0] == token]:
            client = _SHARED.pop(k)
            s = client.stats()
            total["requests"] += s["requests"]
            total["bytes"] += s["bytes"]
            total["attempt_reasons"].update(s["attempt_reasons"])
            client.close()
    total["attempt_reasons"] = dict(total["attempt_reasons"])
    return total
