"""Presentation: the pictures the pipeline draws of its results, apart from the logic
that computes them.

- `coastlines`: coastline polylines and the sea fraction from the GLOBE land mask, the
  one source of every map's coastlines (the matplotlib maps and the audit page);
- `maps`: matplotlib layers shared by the maps (coastlines, antimeridian handling,
  polygons as paths);
- `evalset_map`: the evaluation-set map (`data/evalsets/<name>/map.png`);
- `query_map`: the audit's per-query map (`earthloc audit <query>`).

It lives under `pipeline/` because the pipeline's stages and tools draw these maps and
must not depend on the model package `earthloc/`; `earthloc/` (the audit page) may use
it. Modules here read results, never decide them.
"""
