"""queries stage: every bad row is rejected with its physical line and reason, good rows
(including one across the antimeridian) become footprints, the share gate, the CLI."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earthloc import cli
from pipeline.errors import ConfigError, InputError, RejectedShareError
from pipeline.stages import queries
from pipeline.stages.queries import QueriesParams, QueriesPaths, ingest, read_nasa_csv, run
from support import geod_km2

ROOT = Path(__file__).resolve().parents[1]
REAL_CSV = ROOT / "data" / "inputs" / "metadata_queries_images.csv"
GEOD = pyproj.Geod(ellps="WGS84")
N_GOOD_REAL = 20

with open(REAL_CSV, newline="", encoding="utf-8") as _fh:
    _reader = csv.reader(_fh)
    HEADER = next(_reader)
    REAL_ROWS = [next(_reader) for _ in range(N_GOOD_REAL + 1)]
COL = {name: i for i, name in enumerate(HEADER)}


def variant(frame: str, **changes: str) -> list[str]:
    """A copy of a real good row with a new FRAME and some fields changed."""
    row = list(REAL_ROWS[N_GOOD_REAL])
    row[COL["FRAME"]] = frame
    for k, v in changes.items():
        row[COL[k]] = v
    return row


def antimeridian_row() -> list[str]:
    lats = [-16.6, -15.6, -15.7, -16.7]
    lons = [179.4, 179.5, -179.5, -179.6]
    a, _ = GEOD.polygon_area_perimeter(lons, lats)
    corners = {}
    for c, la, lo in zip(("LL", "UL", "UR", "LR"), lats, lons):
        corners[f"{c}_LAT"], corners[f"{c}_LON"] = f"{la:.6f}", f"{lo:.6f}"
    return variant("900001", NADIR_LAT="-16.2", NADIR_LON="-179.9", SQ_KM_AREA=str(round(abs(a) / 1e6)), **corners)


def _swap_corners(row: list[str], a: str, b: str) -> list[str]:
    row = list(row)
    for s in ("LAT", "LON"):
        row[COL[f"{a}_{s}"]], row[COL[f"{b}_{s}"]] = row[COL[f"{b}_{s}"]], row[COL[f"{a}_{s}"]]
    return row


def geodesic_km2(row: list[str]) -> float:
    """The row's corner quad area by pyproj's Geod (geodesic edges), independent of the stage."""
    lats = [float(row[COL[f"{c}_LAT"]]) for c in ("LL", "UL", "UR", "LR")]
    lons = [float(row[COL[f"{c}_LON"]]) for c in ("LL", "UL", "UR", "LR")]
    a, _ = GEOD.polygon_area_perimeter(lons, lats)
    return abs(a) / 1e6


def area_at(rel: float) -> str:
    """SQ_KM_AREA for which |geodesic - NASA| / NASA equals `rel` (geodesic larger)."""
    return repr(geodesic_km2(REAL_ROWS[N_GOOD_REAL]) / (1 + rel))


MAX_REL = QueriesParams().max_area_rel_diff
HUGE = "https://example.org/" + "a" * 140_000  # over the csv module's 131,072-character field limit


def build_csv(path: Path) -> dict:
    """Write the test CSV; return the expected good ids and (line, reason, id) of bad rows."""
    base = REAL_ROWS[N_GOOD_REAL]
    first_id = "-".join(REAL_ROWS[0][COL[c]] for c in ("MISSION", "ROLL", "FRAME"))
    area = float(base[COL["SQ_KM_AREA"]])
    url_row = variant("800001", URL="https://example.org/a,b\nsecond line")  # quoted, comma and newline
    stray = ",".join(variant("800002")[:-1]) + ',"https://example.org/x.jpg'  # a lone quote opens the URL
    bowtie = _swap_corners(variant("100007"), "UR", "LR")
    repeated = variant("100008", UR_LAT=base[COL["UL_LAT"]], UR_LON=base[COL["UL_LON"]])
    # (kind, fields, expected reason or None for a good row, expected id)
    records: list[tuple[str, list[str] | str, str | None]] = []
    for r in REAL_ROWS[:N_GOOD_REAL]:
        records.append(("good", r, None))
    records += [
        # A field never holds a line break: the record ends at the line end, the rest is its own record.
        ("url_newline", url_row, "malformed_csv"),
        ("stray_quote", stray, "malformed_csv"),  # must not swallow the next lines
        ("good_after_quote", variant("800003"), None),
        ("blank", "", None),
        ("good_after_blank", variant("800004"), None),
        ("blank_spaces", "   ", None),
        ("empty_field", variant("100001", NADIR_LON=""), "missing_field"),
        ("non_numeric", variant("100002", LL_LAT="abc"), "non_numeric_field"),
        ("lat_95", variant("100003", UL_LAT="95.0"), "coordinate_out_of_range"),
        ("lon_-200", variant("100004", LR_LON="-200.0"), "coordinate_out_of_range"),
        ("nadir_out", variant("100005", NADIR_LAT="95.0"), "coordinate_out_of_range"),
        ("duplicate", list(REAL_ROWS[0]), "duplicate_id"),
        ("bowtie", bowtie, "self_intersecting_footprint"),
        ("repeated", repeated, "degenerate_footprint"),
        ("area_x3", variant("100009", SQ_KM_AREA=str(int(area * 3))), "area_mismatch"),
        ("area_zero", variant("100020", SQ_KM_AREA="0"), "non_positive_area"),
        ("area_negative", variant("100021", SQ_KM_AREA=str(-area)), "non_positive_area"),
        ("good_area_just_within", variant("100022", SQ_KM_AREA=area_at(0.9 * MAX_REL)), None),
        ("area_just_beyond", variant("100023", SQ_KM_AREA=area_at(1.1 * MAX_REL)), "area_mismatch"),
        ("id_slash", variant("100010", MISSION="ISS047/x"), "unsafe_id"),
        ("id_dotdot", variant(".."), "unsafe_id"),
        ("id_at", variant("1000@12"), "unsafe_id"),
        ("id_space", variant("1000 13"), "unsafe_id"),
        ("bad_date", variant("100014", YYYYMMDD="20211350"), "bad_date"),
        ("date_7_digits", variant("100017", YYYYMMDD="2021011"), "bad_date"),
        ("too_few", ",".join(variant("100015")[:10]), "wrong_field_count"),
        ("quoted_comma", variant("100016", NADIR_LAT="1,5"), "non_numeric_field"),
        ("url_file", variant("100030", URL="file:///etc/passwd"), "bad_url"),
        ("url_ftp", variant("100031", URL="ftp://example.org/a.jpg"), "bad_url"),
        ("url_no_host", variant("100032", URL="https:///a.jpg"), "bad_url"),
        ("url_script", variant("100033", URL="javascript:alert(1)"), "bad_url"),
        ("url_space", variant("100034", URL="https://example.org/a b.jpg"), "bad_url"),
        ("good_url_http", variant("100035", URL="http://example.org:8080/a.jpg"), None),
        ("good_no_url", variant("100036", URL=""), None),
        ("nul", variant("100040", ORIENTATION="1\x002"), "control_character"),
        ("escape_sequence", variant("100041", FRAME="1\x1b[31m"), "control_character"),
        ("huge_field", variant("100042", URL=HUGE), "malformed_csv"),
        ("good_after_huge", variant("100043"), None),
        ("good_antimeridian", antimeridian_row(), None),
    ]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    line = 2
    expected_bad, expected_good, blank = {}, {}, []
    for kind, fields, reason in records:
        if isinstance(fields, str):
            buf.write(fields + "\n")
            qid = None
        else:
            w.writerow(fields)
            qid = "-".join(fields[COL[c]] for c in ("MISSION", "ROLL", "FRAME"))
        n_lines = 1 + (fields.count("\n") if isinstance(fields, str) else sum(f.count("\n") for f in fields))
        if kind.startswith("blank"):
            blank.append(line)
        elif reason is None:
            expected_good[qid] = (line, fields)
        else:
            # A record cut at a line break has no id; its tail lines are records of their own.
            expected_bad[kind] = (line, reason, qid if n_lines == 1 and reason != "malformed_csv" else None)
            for extra in range(1, n_lines):
                expected_bad[f"{kind}_tail{extra}"] = (line + extra, "wrong_field_count", None)
        line += n_lines
    text = buf.getvalue()
    assert '"https://example.org/a,b\nsecond line"' in text and '"1,5"' in text
    path.write_text(text, encoding="utf-8")
    return {
        "good": expected_good,
        "bad": expected_bad,
        "first_id": first_id,
        "blank": blank,
        "n_rows": len(expected_good) + len(expected_bad),
        "n_lines": line - 1,
    }


@pytest.fixture()
def case(tmp_path):
    path = tmp_path / "meta.csv"
    exp = build_csv(path)
    return path, exp


@pytest.fixture()
def ingested(case):
    path, exp = case
    raw = read_nasa_csv(path)
    gdf, rej = ingest(raw, QueriesParams(densify_deg=0.05))
    return raw, gdf, rej, exp


def test_read_nasa_csv_physical_lines(ingested):
    raw, _, _, exp = ingested
    assert len(raw) == exp["n_rows"]
    assert raw["_line"].iloc[0] == 2
    # The quoted URL's line break ends its record at line 22; line 23 is a record of its own.
    assert raw["_line"].iloc[N_GOOD_REAL] == N_GOOD_REAL + 2
    assert raw["_line"].iloc[N_GOOD_REAL + 1] == N_GOOD_REAL + 3
    assert raw.attrs["blank_lines"] == exp["blank"]
    # Every line is a record or blank, once.
    assert sorted([*raw["_line"], *exp["blank"]]) == list(range(2, exp["n_lines"] + 1))


def test_every_bad_row_rejected_with_line_and_reason(ingested):
    _, _, rej, exp = ingested
    assert list(rej.columns) == ["line", "query_id", "reason", "detail"]
    assert len(rej) == len(exp["bad"])
    by_line = rej.set_index("line")
    for kind, (line, reason, qid) in exp["bad"].items():
        assert line in by_line.index, kind
        row = by_line.loc[line]
        assert row["reason"] == reason, (kind, row.to_dict())
        if qid is not None:
            assert row["query_id"] == qid, kind
        assert row["detail"], kind


def test_rejection_details(ingested):
    _, _, rej, exp = ingested
    d = rej.set_index("line")["detail"]
    bad = exp["bad"]
    assert d[bad["duplicate"][0]] == "same id as line 2"
    assert d[bad["empty_field"][0]] == "NADIR_LON is empty"
    assert "LL_LAT" in d[bad["non_numeric"][0]] and "abc" in d[bad["non_numeric"][0]]
    assert "NADIR_LAT" in d[bad["quoted_comma"][0]] and "1,5" in d[bad["quoted_comma"][0]]
    assert "latitude" in d[bad["lat_95"][0]]
    assert "longitude" in d[bad["lon_-200"][0]]
    assert "nadir" in d[bad["nadir_out"][0]]
    assert "corners coincide" in d[bad["repeated"][0]]
    assert "Self-intersection" in d[bad["bowtie"][0]]
    assert "20211350" in d[bad["bad_date"][0]]
    assert d[bad["too_few"][0]] == f"record has 10 fields, header has {len(HEADER)}"
    assert "NASA" in d[bad["area_x3"][0]]


def test_good_rows_are_footprints(ingested):
    _, gdf, _, exp = ingested
    good = exp["good"]
    assert sorted(gdf["query_id"]) == sorted(good)
    assert gdf.crs.to_epsg() == 4326
    for _, r in gdf.iterrows():
        line, fields = good[r["query_id"]]
        assert r["source_line"] == line
        f = {name: fields[i] for name, i in COL.items()}
        corners = [f[f"{c}_{s}"] for c in ("LL", "UL", "UR", "LR") for s in ("LAT", "LON")]
        expected = (
            "@"
            + "@".join(f"{float(v):.6f}" for v in corners)
            + f"@{r['query_id']}@{f['YYYYMMDD']}@{float(f['NADIR_LAT']):.1f}@{float(f['NADIR_LON']):.1f}"
            + f"@{int(round(float(f['SQ_KM_AREA'])))}@{f['ORIENTATION']}@.jpg"
        )
        assert r["filename"] == expected
        assert r["year"] == int(f["YYYYMMDD"][:4])
        assert r["nasa_area_km2"] == float(f["SQ_KM_AREA"])
        assert r["geometry"].is_valid
        b = r["geometry"].bounds
        assert -180 <= b[0] and b[2] <= 180 and -90 <= b[1] and b[3] <= 90
        assert r["area_km2"] == pytest.approx(geod_km2(r["geometry"]), rel=2e-3)
        assert abs(r["geodesic_area_km2"] / r["nasa_area_km2"] - 1) <= 0.05


def test_antimeridian_footprint(ingested):
    _, gdf, _, _ = ingested
    row = gdf[gdf["query_id"].str.endswith("-900001")].iloc[0]
    assert bool(row["crosses_antimeridian"])
    assert int(gdf["crosses_antimeridian"].sum()) == 1
    g = row["geometry"]
    assert g.geom_type == "MultiPolygon" and len(g.geoms) == 2
    b = g.bounds
    assert b[0] == pytest.approx(-180.0) and b[2] == pytest.approx(180.0)
    # Reference: the unwrapped quad's area by Geod (lon/lat-straight edges).
    lats = [-16.6, -15.6, -15.7, -16.7]
    lons = [179.4, 179.5, 180.5, 180.4]
    ref = geod_km2(shapely.Polygon(list(zip(lons, lats))))
    assert row["area_km2"] == pytest.approx(ref, rel=1e-4)
    assert geod_km2(g) == pytest.approx(ref, rel=1e-6)
    assert row["geodesic_area_km2"] == pytest.approx(ref, rel=1e-3)


def test_run_fails_on_share_but_writes_rejected(case, tmp_path):
    path, exp = case
    out, rej_out = tmp_path / "q.parquet", tmp_path / "rej.csv"
    with pytest.raises(RejectedShareError) as ei:
        run(QueriesParams(max_rejected_fraction=0.01), QueriesPaths(path, out, rej_out))
    msg = str(ei.value)
    assert "\n" not in msg and f"{len(exp['bad'])} of {exp['n_rows']} rows rejected" in msg
    assert isinstance(ei.value, InputError)
    assert not out.exists()
    rej = pd.read_csv(rej_out, keep_default_na=False)
    assert list(rej.columns) == ["line", "query_id", "reason", "detail"]
    assert sorted(rej["line"]) == sorted(v[0] for v in exp["bad"].values())
    assert dict(zip(rej["line"], rej["reason"])) == {v[0]: v[1] for v in exp["bad"].values()}


def test_run_succeeds_under_share(case, tmp_path, capsys):
    path, exp = case
    out, rej_out = tmp_path / "sub" / "q.parquet", tmp_path / "rej.csv"
    share = len(exp["bad"]) / exp["n_rows"]
    summary = run(QueriesParams(max_rejected_fraction=share), QueriesPaths(path, out, rej_out))  # share == max passes
    gdf, _ = ingest(read_nasa_csv(path), QueriesParams(max_rejected_fraction=share))
    back = gpd.read_parquet(out)
    assert sorted(back["query_id"]) == sorted(exp["good"]) == sorted(gdf["query_id"])
    assert summary["footprints"] == len(exp["good"]) and summary["rejected"] == len(exp["bad"])
    assert back.crs.to_epsg() == 4326
    assert shapely.equals(back.geometry.values, gdf.geometry.values).all()
    assert "queries:" in capsys.readouterr().out


def test_missing_file_and_column(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_nasa_csv(tmp_path / "nope.csv")
    hdr = [h for h in HEADER if h != "SQ_KM_AREA"]
    p = tmp_path / "m.csv"
    p.write_text(",".join(hdr) + "\n" + ",".join(["1"] * len(hdr)) + "\n")
    with pytest.raises(InputError, match="SQ_KM_AREA"):
        read_nasa_csv(p)
    e = tmp_path / "empty.csv"
    e.write_text("")
    with pytest.raises(InputError):
        read_nasa_csv(e)
    with pytest.raises(InputError):
        run(QueriesParams(), QueriesPaths(tmp_path / "nope.csv", tmp_path / "o.parquet", tmp_path / "r.csv"))


def test_url_is_optional(tmp_path):
    hdr = [h for h in HEADER if h != "URL"]
    p = tmp_path / "m.csv"
    rows = [[v for h, v in zip(HEADER, r) if h != "URL"] for r in REAL_ROWS[:3]]
    with open(p, "w", newline="") as fh:
        csv.writer(fh).writerows([hdr, *rows])
    gdf, rej = ingest(read_nasa_csv(p), QueriesParams())
    assert len(gdf) == 3 and rej.empty and (gdf["url"] == "").all()


def test_params_validation():
    assert QueriesParams.from_section({}) == QueriesParams()
    p = QueriesParams.from_section({"max_rejected_fraction": "0.5", "densify_deg": 0.2})
    assert p.max_rejected_fraction == 0.5 and p.densify_deg == 0.2
    for bad in ({"max_rejected_fraction": 2}, {"densify_deg": 0}, {"max_area_rel_diff": "x"}):
        with pytest.raises(ConfigError):
            QueriesParams.from_section(bad)


def _params_file(tmp_path: Path, max_rej: float) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"queries": {"max_rejected_fraction": max_rej, "densify_deg": 0.25}}))
    return p


def _queries_args(csv_path, tmp_path, max_rejected_fraction):
    """`earthloc queries` on `csv_path`, writing q.parquet and rej.csv into tmp_path."""
    params = _params_file(tmp_path, max_rejected_fraction)
    out, rejected = tmp_path / "q.parquet", tmp_path / "rej.csv"
    return ["queries", str(csv_path), "--params", str(params), "--out", str(out), "--rejected", str(rejected)]


def test_cli_failure_exit_code_and_one_line(case, tmp_path, capsys):
    path, exp = case
    args = _queries_args(path, tmp_path, 0.01)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("earthloc queries: error:")
    assert "rows rejected" in err
    assert (tmp_path / "rej.csv").exists() and not (tmp_path / "q.parquet").exists()


def test_cli_missing_file(tmp_path, capsys):
    args = _queries_args(tmp_path / "missing.csv", tmp_path, 0.01)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_cli_success(case, tmp_path, capsys):
    path, exp = case
    args = _queries_args(path, tmp_path, 1.0)
    assert cli.main(args) == 0
    assert len(gpd.read_parquet(tmp_path / "q.parquet")) == len(exp["good"])


def test_real_csv_all_accepted():
    raw = read_nasa_csv(REAL_CSV)
    gdf, rej = ingest(raw, QueriesParams.from_section({"densify_deg": 0.25}))
    assert len(raw) == 17763
    assert rej.empty, rej["reason"].value_counts().to_dict()
    assert len(gdf) == 17763 and gdf["query_id"].is_unique
    assert not gdf["crosses_antimeridian"].any()  # §1.4: no footprint crosses ±180
    assert gdf["source_line"].tolist() == list(range(2, 17765))
    rel = np.abs(gdf["area_km2"] / gdf["nasa_area_km2"] - 1)
    assert rel.max() < 0.01
    assert gdf["filename"].str.match(r"^@(-?\d+\.\d{6}@){8}[A-Z]+\d+-E-\d+@\d{8}@").all()
    assert set(queries.REQUIRED_COLUMNS) <= set(raw.columns)


def test_bom_before_header_is_accepted(tmp_path):
    p = tmp_path / "bom.csv"
    with open(p, "w", newline="", encoding="utf-8-sig") as fh:  # writes EF BB BF first
        csv.writer(fh).writerows([HEADER, *REAL_ROWS[:3]])
    assert p.read_bytes().startswith(b"\xef\xbb\xbf")
    gdf, rej = ingest(read_nasa_csv(p), QueriesParams())
    assert len(gdf) == 3 and rej.empty


def test_rejected_csv_is_printable_and_short(case, tmp_path):
    path, exp = case
    rej_out = tmp_path / "rej.csv"
    run(QueriesParams(max_rejected_fraction=1.0), QueriesPaths(path, tmp_path / "q.parquet", rej_out))
    data = rej_out.read_bytes()
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", data), "a raw control character in rejected.csv"
    assert len(data.splitlines()) == 1 + len(exp["bad"])  # one line per rejected record
    rej = pd.read_csv(rej_out, keep_default_na=False).set_index("line")
    assert rej.loc[exp["bad"]["nul"][0], "reason"] == "control_character"
    assert "\\x1b" in rej.loc[exp["bad"]["escape_sequence"][0], "query_id"]
    assert "field larger than field limit" in rej.loc[exp["bad"]["huge_field"][0], "detail"]
    assert rej["detail"].str.len().max() < 400 and rej["query_id"].str.len().max() < 400


def test_url_problem():
    from pipeline.stages.queries import url_problem

    assert url_problem("") == ""
    assert url_problem("https://eol.jsc.nasa.gov/DatabaseImages/ESC/large/ISS047/ISS047-E-55412.JPG") == ""
    for bad, words in [("file:///etc/passwd", "scheme 'file'"), ("https:///x", "no host"),
                       ("http://[::1/x", "does not parse"), ("https://x.org:99999/", "does not parse"),
                       ("https://x.org/a\tb", "whitespace"), ("//x.org/a", "scheme ''")]:  # fmt: skip
        assert words in url_problem(bad), bad


# -- every physical line is accounted for, whatever the file holds ------------------------------
LINE_MUTATIONS = ["intact", "stray_quote", "quoted_newline", "raw_newline", "nul", "bom", "huge", "blank",
                  "cr", "invalid_utf8", "too_many_fields"]  # fmt: skip


def _hostile_line(i: int, kind: str, pos: int) -> bytes:
    row = variant(f"7{i:05d}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    text = buf.getvalue()
    cut = pos % (len(text) + 1)
    if kind == "stray_quote":
        text = text[:cut] + '"' + text[cut:]
    elif kind == "quoted_newline":
        field = pos % len(row)
        row[field] = row[field][:1] + "\n" + row[field][1:]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)  # quotes the field holding "\n"
        text = buf.getvalue()[:-1]
    elif kind == "raw_newline":
        text = text[:cut] + "\n" + text[cut:]
    elif kind == "nul":
        text = text[:cut] + "\x00" + text[cut:]
    elif kind == "bom":
        text = text[:cut] + "\ufeff" + text[cut:]
    elif kind == "huge":
        text = text + "," + "9" * 140_000
    elif kind == "blank":
        text = " " * (pos % 3)
    elif kind == "cr":
        text = text[:cut] + "\r" + text[cut:]
    elif kind == "too_many_fields":
        text = text + ",x"
    data = text.encode("utf-8")
    if kind == "invalid_utf8":
        data = data[:cut] + b"\xff" + data[cut:]
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(st.sampled_from(LINE_MUTATIONS), st.integers(0, 10_000)), min_size=1, max_size=12),
       bom=st.booleans(), crlf=st.booleans(), final_newline=st.booleans())  # fmt: skip
def test_every_physical_line_is_kept_rejected_or_blank(tmp_path, lines, bom, crlf, final_newline):
    """Generated files with stray quotes, line breaks in and out of quotes, NULs, BOMs,
    huge fields and invalid bytes: each physical line (split on \\n) is exactly one of a
    kept footprint (at its own line, with its own id), a rejected record or a blank line."""
    eol = b"\r\n" if crlf else b"\n"
    parts = [",".join(HEADER).encode()]
    for i, (kind, pos) in enumerate(lines):
        data = _hostile_line(i, kind, pos)
        parts.append(data)
    body = eol.join(parts) + (eol if final_newline else b"")
    p = tmp_path / "hostile.csv"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    # The truth, counted here: physical lines are what b"\n" separates.
    n_lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    span: dict[str, range] = {}  # id of each generated row -> the lines it was written on
    intact: dict[int, str] = {}  # first line -> id of the rows written unchanged
    line = 1
    for i, part in enumerate(parts[1:]):
        line += 1 + parts[i].count(b"\n")
        qid = "-".join(variant(f"7{i:05d}")[COL[c]] for c in ("MISSION", "ROLL", "FRAME"))
        span[qid] = range(line, line + part.count(b"\n") + 1)
        if lines[i][0] == "intact":
            intact[line] = qid

    raw = read_nasa_csv(p)
    gdf, rej = ingest(raw, QueriesParams(max_area_rel_diff=1.0))
    kept = gdf["source_line"].tolist()
    rejected = rej["line"].tolist()
    blank = raw.attrs["blank_lines"]
    assert sorted(kept + rejected + blank) == list(range(2, n_lines + 1))
    found = dict(zip(gdf["source_line"], gdf["query_id"]))
    assert intact.items() <= found.items()  # no intact row swallowed by a neighbour
    # A row kept despite a change (a line break that leaves a whole record on one line, say) is
    # on a line of its own, with its own id: nothing invented, nothing shifted.
    assert all(line in span[qid] for line, qid in found.items())
    assert rej["reason"].ne("").all()
