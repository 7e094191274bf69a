"""queries stage: NASA astronaut-photo metadata (CSV) -> footprints (GeoParquet).

Every physical line of the CSV ends as a footprint, a line of rejected.csv (with its
line number and reason) or a counted blank line; nothing is dropped silently and no line
is swallowed by a neighbour (see `read_nasa_csv`). The stage fails only when the
rejected share exceeds `queries.max_rejected_fraction`. docs/reliability.md ("Hostile input") lists
the hostile-input rules.
"""

from __future__ import annotations

import codecs
import csv
import re
import time
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import geopandas as gpd
import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError, RejectedShareError
from pipeline.geo.area import DEFAULT_DENSIFY_DEG, area_km2, geod_quad_area_km2
from pipeline.geo.footprints import check_quads, quads_from_corners, split_antimeridian, unwrap_ring_lons
from pipeline.geo.names import SAFE_ID_RE, query_filename
from pipeline.io import atomic_path, write_geoparquet
from pipeline.params import build_config, check_keys
from pipeline.schema import CORNER_COLUMNS, NASA_CORNER_COLUMNS

NUMERIC_COLUMNS = [*NASA_CORNER_COLUMNS, "NADIR_LAT", "NADIR_LON", "SQ_KM_AREA", "ORIENTATION"]
ID_COLUMNS = ["MISSION", "ROLL", "FRAME"]
REQUIRED_COLUMNS = [
    *NASA_CORNER_COLUMNS,
    *ID_COLUMNS,
    "YYYYMMDD",
    "NADIR_LAT",
    "NADIR_LON",
    "SQ_KM_AREA",
    "ORIENTATION",
]
OPTIONAL_COLUMNS = ["URL"]
REJECTED_COLUMNS = ["line", "query_id", "reason", "detail"]
# A NASA record is about 200 bytes; a line past this is refused unread (not held in memory).
MAX_LINE_BYTES = 1 << 20
# rejected.csv shows at most this many characters of a detail or id (a huge field stays out).
MAX_SHOWN_CHARS = 200
# C0 controls but the tab, DEL and C1 controls: never in NASA's metadata.
_NOT_IN_URLS = frozenset('<>"{}|\\^`')  # RFC 3986: must be percent-encoded
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _unprintable(ch: str) -> bool:
    """Control, format, surrogate, private or unassigned characters, and the line and
    paragraph separators: what must not reach a terminal or a CSV cell raw."""
    cat = unicodedata.category(ch)
    return cat[0] == "C" or cat in ("Zl", "Zp")


@dataclass(frozen=True)
class QueriesParams:
    """The `queries` params section."""

    csv: str = "data/inputs/metadata_queries_images.csv"  # the NASA metadata CSV when the CLI names none
    max_rejected_fraction: float = 0.01  # the stage fails when a larger share of rows is rejected
    max_area_rel_diff: float = 0.05  # reject a row whose geodesic area differs more from NASA's
    densify_deg: float = DEFAULT_DENSIFY_DEG  # footprint edges are densified to this step

    def __post_init__(self) -> None:
        if not 0 <= self.max_rejected_fraction <= 1:
            raise ValueError("max_rejected_fraction must be within [0, 1]")
        if self.densify_deg <= 0:
            raise ValueError("densify_deg must be > 0")

    @classmethod
    def from_section(cls, sec: Mapping[str, Any] | None) -> QueriesParams:
        """From the `queries` section; an unknown key is an error naming it. Numbers may
        be written as strings ("0.5"), as `dvc exp run -S` can leave them."""
        sec = dict(sec or {})
        check_keys(sec, {f.name for f in fields(cls)}, "queries")
        try:
            values = {k: str(v) if k == "csv" else float(v) for k, v in sec.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params queries: {exc}") from exc
        return build_config(cls, values, "queries")


@dataclass(frozen=True)
class QueriesPaths:
    """What the queries stage reads and writes."""

    csv: Path  # the NASA metadata CSV
    out: Path  # the footprints GeoParquet
    rejected: Path  # the CSV of rejected rows, one per row with its reason


class _Rejections:
    """Collects the first reason each row is rejected for."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)

    def add(self, mask: np.ndarray, reason: str, detail: str | np.ndarray) -> None:
        new = mask & (self.reason == "")
        self.reason[new] = reason
        self.detail[new] = detail if isinstance(detail, str) else np.asarray(detail, dtype=object)[new]

    @property
    def ok(self) -> np.ndarray:
        return self.reason == ""


def _physical_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes without the line end, length) of every line split on b"\\n" alone;
    a line longer than `max_bytes` is skipped unread and comes back as None, so one huge
    line costs no more memory than a normal one."""
    number = 0
    while True:
        chunk = fh.readline(max_bytes + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) <= max_bytes or chunk.endswith(b"\n"):
            body = chunk[:-1] if chunk.endswith(b"\n") else chunk
            yield number, (body[:-1] if body.endswith(b"\r") else body), len(body)
            continue
        length = len(chunk)
        while not chunk.endswith(b"\n"):
            chunk = fh.readline(1 << 20)
            if not chunk:
                break
            length += len(chunk)
        yield number, None, length


def escape_controls(text: str) -> str:
    """`text` with control, format and separator characters written as escapes (\\x00,
    \\u2028, ...) and backslashes doubled: one printable line, whatever the input held."""
    return "".join(
        "\\\\"
        if ch == "\\"
        else ch
        if not _unprintable(ch)
        else (
            f"\\x{ord(ch):02x}"
            if ord(ch) < 0x100
            else f"\\u{ord(ch):04x}"
            if ord(ch) < 0x10000
            else f"\\U{ord(ch):08x}"
        )
        for ch in text
    )


def _parse_line(text: str) -> tuple[list[str], str, str]:
    """Fields of one physical line, and (reason, detail) when it is not a clean CSV record."""
    try:
        fields = next(csv.reader([text], strict=True), [])
    except csv.Error as exc:
        return [], "malformed_csv", f"{exc} (an unbalanced quote or a field over {csv.field_size_limit():,} characters)"
    if _CONTROL_RE.search(text):
        return fields, "control_character", "the line holds a control character (NUL, CR, ...)"
    return fields, "", ""


def read_nasa_csv(path: Path) -> pd.DataFrame:
    """The CSV as strings, one record per physical line, with its line number.

    NASA's fields (numbers, ids, dates, URLs) never hold a line break, so a record is one
    line: a stray quote cannot swallow the lines after it, and every line ends either as
    a record (kept or rejected by `ingest`) or as a blank line (listed in
    `df.attrs["blank_lines"]`). Lines the csv module cannot split, that are not UTF-8,
    that hold control characters or that are longer than `MAX_LINE_BYTES` become records
    whose `_problem` column says why (`ingest` rejects them with that reason). A UTF-8
    byte order mark before the header is accepted."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    rows: list[list[str]] = []
    lines: list[int] = []
    widths: list[int] = []
    problems: list[str] = []
    details: list[str] = []
    blank: list[int] = []
    header: list[str] | None = None
    try:
        with open(path, "rb") as fh:
            for number, data, length in _physical_lines(fh, MAX_LINE_BYTES):
                if header is None:
                    if data is None:
                        raise InputError(f"{path}: header line longer than {MAX_LINE_BYTES:,} bytes")
                    try:
                        text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise InputError(f"{path}: header is not UTF-8 text ({exc})") from exc
                    fields, reason, detail = _parse_line(text)
                    if reason:
                        raise InputError(f"{path}: header line unreadable: {detail}")
                    header = [h.strip() for h in fields]
                    missing = [c for c in REQUIRED_COLUMNS if c not in header]
                    if missing:
                        raise InputError(f"{path}: not a NASA metadata CSV, missing columns {missing}")
                    continue
                if data is None:
                    fields, reason, detail = [], "line_too_long", f"line of {length:,} bytes > {MAX_LINE_BYTES:,}"
                else:
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        fields, reason, detail = [], "not_utf8", f"bytes {exc.start}-{exc.end} are not UTF-8"
                    else:
                        if not text.strip():
                            blank.append(number)
                            continue
                        fields, reason, detail = _parse_line(text)
                lines.append(number)
                widths.append(len(fields))
                rows.append((fields + [""] * len(header))[: len(header)])
                problems.append(reason)
                details.append(detail)
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc})") from exc
    if header is None:
        raise InputError(f"{path}: empty file")
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df.insert(0, "_line", np.asarray(lines, dtype=np.int64))
    df["_width"] = np.asarray(widths, dtype=np.int64)
    df["_expected_width"] = len(header)
    df["_problem"] = np.asarray(problems, dtype=object)
    df["_problem_detail"] = np.asarray(details, dtype=object)
    for col in OPTIONAL_COLUMNS:
        if col not in df:
            df[col] = ""
    df.attrs["blank_lines"] = blank
    return df


def url_problem(url: str) -> str:
    """Why `url` is not an http(s) URL with a host, or "" if it is (or is empty: no URL).
    Only such URLs reach the fetch stage, which downloads them: never a file:, ftp: or
    other scheme, nor a link without a host."""
    if not url:
        return ""
    if any(ch.isspace() or _unprintable(ch) for ch in url):
        return "URL holds whitespace or control characters"
    if any(ch in _NOT_IN_URLS for ch in url):
        return 'URL holds characters a URL never holds unescaped (<>"{}|\\^`)'
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError as exc:
        return f"URL does not parse ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"URL scheme {parts.scheme!r} is not http or https"
    if not host:
        return "URL has no host"
    return ""


def ingest(raw: pd.DataFrame, params: QueriesParams) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """Validate and convert a raw CSV table; returns (footprints, rejections)."""
    n = len(raw)
    rej = _Rejections(n)
    text = {c: raw[c].astype(str).str.strip() for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    query_id = (text["MISSION"] + "-" + text["ROLL"] + "-" + text["FRAME"]).to_numpy(dtype=object)
    query_id[raw["_width"].to_numpy() == 0] = ""  # a line that could not be split has no id

    if "_problem" in raw:
        problem = raw["_problem"].to_numpy(dtype=object)
        for reason in pd.unique(problem[problem != ""]):
            rej.add(problem == reason, str(reason), raw["_problem_detail"].to_numpy(dtype=object))
    rej.add(
        (raw["_width"] != raw["_expected_width"]).to_numpy(),
        "wrong_field_count",
        "record has "
        + raw["_width"].astype(str).to_numpy(dtype=object)
        + " fields, header has "
        + raw["_expected_width"].astype(str).to_numpy(dtype=object),
    )
    for col in REQUIRED_COLUMNS:
        rej.add((text[col] == "").to_numpy(), "missing_field", f"{col} is empty")
    values: dict[str, np.ndarray] = {}
    for col in NUMERIC_COLUMNS:
        num = pd.to_numeric(text[col], errors="coerce").to_numpy(dtype=np.float64)
        rej.add(
            ~np.isfinite(num), "non_numeric_field", col + " is not a finite number: " + text[col].to_numpy(dtype=object)
        )
        values[col] = num

    lats = np.stack([values[c] for c in NASA_CORNER_COLUMNS[0::2]], axis=1)
    lons = np.stack([values[c] for c in NASA_CORNER_COLUMNS[1::2]], axis=1)
    with np.errstate(invalid="ignore"):
        rej.add((np.abs(lats) > 90).any(axis=1), "coordinate_out_of_range", "a corner latitude is outside [-90, 90]")
        rej.add(
            (np.abs(lons) > 180).any(axis=1), "coordinate_out_of_range", "a corner longitude is outside [-180, 180]"
        )
        rej.add(np.abs(values["NADIR_LAT"]) > 90, "coordinate_out_of_range", "nadir latitude outside [-90, 90]")
        rej.add(np.abs(values["NADIR_LON"]) > 180, "coordinate_out_of_range", "nadir longitude outside [-180, 180]")
        rej.add(values["SQ_KM_AREA"] <= 0, "non_positive_area", "SQ_KM_AREA <= 0")

    safe = np.array([bool(SAFE_ID_RE.match(q)) for q in query_id], dtype=bool)
    for col in ID_COLUMNS:
        part_ok = text[col].str.fullmatch(r"[A-Za-z0-9]+").to_numpy(dtype=bool)
        safe &= part_ok
    rej.add(
        ~safe,
        "unsafe_id",
        "id has characters outside [A-Za-z0-9-]: " + pd.Series(query_id).map(repr).to_numpy(dtype=object),
    )
    # Exactly eight digits: pandas would read "2021011" as 2021-01-01.
    dates = pd.to_datetime(text["YYYYMMDD"].where(text["YYYYMMDD"].str.fullmatch(r"[0-9]{8}")),
                           format="%Y%m%d", errors="coerce")  # fmt: skip
    rej.add(
        dates.isna().to_numpy(), "bad_date", "YYYYMMDD is not a valid date: " + text["YYYYMMDD"].to_numpy(dtype=object)
    )

    url_problems = {u: url_problem(u) for u in pd.unique(text["URL"])}
    url_reason = text["URL"].map(url_problems).to_numpy(dtype=object)
    rej.add(url_reason != "", "bad_url", url_reason + ": " + text["URL"].to_numpy(dtype=object))

    # Duplicates: the first occurrence of an id wins; later ones name the line they repeat.
    first_line = pd.Series(raw["_line"].to_numpy()).groupby(query_id).transform("min").to_numpy()
    dup = raw["_line"].to_numpy() != first_line
    rej.add(dup, "duplicate_id", "same id as line " + pd.Series(first_line).astype(str).to_numpy(dtype=object))

    # Geometry only for rows that survived the field checks.
    cand = np.flatnonzero(rej.ok)
    ulons = unwrap_ring_lons(lons[cand])
    quads = quads_from_corners(lats[cand], ulons)
    check = check_quads(quads)
    bad_geom = np.zeros(n, dtype=bool)
    reasons = np.full(n, "", dtype=object)
    details = np.full(n, "", dtype=object)
    bad_geom[cand] = check.reason != ""
    reasons[cand], details[cand] = check.reason, check.detail
    for reason in ("degenerate_footprint", "self_intersecting_footprint"):
        rej.add(bad_geom & (reasons == reason), reason, details)

    footprints = np.full(n, None, dtype=object)
    footprints[cand] = split_antimeridian(quads)
    crosses = np.zeros(n, dtype=bool)
    crosses[cand] = (ulons > 180).any(axis=1)
    area = np.full(n, np.nan)
    ok_geom = np.flatnonzero(rej.ok)
    area[ok_geom] = area_km2(footprints[ok_geom], params.densify_deg)
    geodesic = np.full(n, np.nan)
    geodesic[ok_geom] = geod_quad_area_km2(lats[ok_geom], lons[ok_geom])
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(geodesic - values["SQ_KM_AREA"]) / values["SQ_KM_AREA"]
    far = rej.ok & (rel > params.max_area_rel_diff)
    rej.add(
        far,
        "area_mismatch",
        np.array(
            [
                f"geodesic area {g:.0f} km2 vs NASA {a:.0f} km2 ({r:.1%})"
                for g, a, r in zip(geodesic, values["SQ_KM_AREA"], rel)
            ],
            dtype=object,
        ),
    )

    ok = rej.ok
    rejected = pd.DataFrame(
        {
            "line": raw["_line"].to_numpy()[~ok],
            "query_id": query_id[~ok],
            "reason": rej.reason[~ok],
            "detail": rej.detail[~ok],
        }
    )
    idx = np.flatnonzero(ok)
    corners = np.stack([values[c][idx] for c in NASA_CORNER_COLUMNS], axis=1)
    table = pd.DataFrame(
        {
            "query_id": query_id[idx].astype(str),
            "mission": text["MISSION"].to_numpy()[idx],
            "roll": text["ROLL"].to_numpy()[idx],
            "frame": text["FRAME"].to_numpy()[idx],
            "date": text["YYYYMMDD"].to_numpy()[idx],
            "year": dates.dt.year.to_numpy()[idx].astype(np.int64),
            "nadir_lat": values["NADIR_LAT"][idx],
            "nadir_lon": values["NADIR_LON"][idx],
            **{c: values[n][idx] for c, n in zip(CORNER_COLUMNS, NASA_CORNER_COLUMNS)},
            "orientation": values["ORIENTATION"][idx],
            "orientation_raw": text["ORIENTATION"].to_numpy()[idx],
            "nasa_area_km2": values["SQ_KM_AREA"][idx],
            "area_km2": area[idx],
            "geodesic_area_km2": geodesic[idx],
            "crosses_antimeridian": crosses[idx],
            "url": text["URL"].to_numpy()[idx],
            "source_line": raw["_line"].to_numpy()[idx],
        }
    )
    table.insert(
        6,
        "filename",
        [
            query_filename(c.tolist(), q, d, la, lo, a, o)
            for c, q, d, la, lo, a, o in zip(
                corners,
                table["query_id"],
                table["date"],
                table["nadir_lat"],
                table["nadir_lon"],
                table["nasa_area_km2"],
                table["orientation_raw"],
            )
        ],
    )
    gdf = gpd.GeoDataFrame(table, geometry=footprints[idx], crs="EPSG:4326")
    return gdf, rejected


def _shown(text: str) -> str:
    """A value as rejected.csv shows it: control characters escaped, at most MAX_SHOWN_CHARS."""
    if len(text) > MAX_SHOWN_CHARS:
        text = f"{text[:MAX_SHOWN_CHARS]}... ({len(text):,} characters)"
    return escape_controls(text)


def write_rejected(rejected: pd.DataFrame, dest: Path) -> None:
    """rejected.csv, one printable line per rejected record (ids and details escaped)."""
    shown = rejected.copy()
    for col in ("query_id", "detail"):
        shown[col] = [_shown(str(v)) for v in shown[col]]
    with atomic_path(dest) as tmp:
        shown.to_csv(tmp, index=False, columns=REJECTED_COLUMNS, quoting=csv.QUOTE_MINIMAL)


def run(params: QueriesParams, paths: QueriesPaths) -> dict[str, Any]:
    """Ingest `paths.csv`; write the footprints and the rejected rows; return the counts.
    The rejected rows are written even when too many of them fail the stage."""
    csv_path, out, rejected_out = paths.csv, paths.out, paths.rejected
    t0 = time.perf_counter()
    raw = read_nasa_csv(csv_path)
    gdf, rejected = ingest(raw, params)
    # The rejection record is written even when the stage then fails: it is the diagnosis.
    write_rejected(rejected, rejected_out)
    share = len(rejected) / max(1, len(raw))
    by_reason = rejected["reason"].value_counts().to_dict()
    if share > params.max_rejected_fraction:
        raise RejectedShareError(
            f"{len(rejected)} of {len(raw)} rows rejected ({share:.1%} > max_rejected_fraction "
            f"{params.max_rejected_fraction:.1%}): {by_reason}; see {rejected_out}"
        )
    write_geoparquet(gdf, out)
    blank = len(raw.attrs.get("blank_lines", []))
    across = int(gdf["crosses_antimeridian"].sum())
    print(
        f"queries: {len(gdf):,} footprints, {len(rejected)} rejected {by_reason}, {blank} blank lines "
        f"({across} across the antimeridian) -> {out} in {time.perf_counter() - t0:.1f} s"
    )
    return {
        "footprints": int(len(gdf)),
        "rejected": int(len(rejected)),
        "rejected_by_reason": {str(k): int(v) for k, v in by_reason.items()},
        "blank_lines": blank,
        "across_antimeridian": across,
    }
