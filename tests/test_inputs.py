"""The shipped inputs are the ones their NOTICE describes."""

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_query_csv_checksum_matches_notice() -> None:
    csv = ROOT / "data" / "inputs" / "metadata_queries_images.csv"
    notice = (ROOT / "data" / "inputs" / "NOTICE.md").read_text()
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert digest in notice
    assert digest == "afb2b642da3d2d1e10c0f5230cfa867863c27d2b9c8e2d624f883113fe24a3a3"
