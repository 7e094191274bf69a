"""The demo protocol's plumbing: tiles rendered in worker processes are the same bytes,
areas of interest fetched for some years only, and query photos limited to the ones used."""

from __future__ import annotations

import requests

from pipeline.synthetic.server import SyntheticTileServer, layer_name, tile_jpeg

TILES = [(11, 845, 483), (10, 422, 241), (9, 211, 120)]  # z, y, x around (30 N, 95 W)


def test_worker_processes_serve_the_same_bytes_as_in_process_rendering() -> None:
    with SyntheticTileServer(seed=0, render_processes=2) as srv, requests.Session() as http:
        for z, y, x in TILES:
            url = f"{srv.base_url}/wmts/1.0.0/{layer_name(2019)}/default/g/{z}/{y}/{x}.jpg"
            resp = http.get(url, timeout=60)
            assert resp.status_code == 200, resp.text
            assert resp.content == tile_jpeg(z, x, y, 2019, 0)
        assert srv.tiles_rendered == len(TILES)
        # out-of-range tiles are still refused before any worker is asked
        bad = http.get(f"{srv.base_url}/wmts/1.0.0/{layer_name(2019)}/default/g/9/512/0.jpg", timeout=10)
        assert bad.status_code == 404


def test_negative_render_processes_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="render_processes"):
        SyntheticTileServer(render_processes=-1)
