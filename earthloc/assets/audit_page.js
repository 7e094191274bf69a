// Audit page script (earthloc/audit_page.py inlines it after Leaflet and the data).
// Every string from the data (query ids, region ids, orientations) reaches the DOM as
// text: through textContent or esc(), never as HTML of its own.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("data").textContent);
  var COLORS = { fp: "#1f4fd1", pos: "#1a9c3c", hit: "#00b400", miss: "#e00000", cov: "#bdbdbd", coast: "#5a6b7a", grid: "#b8c4ce" };
  // A grid region without a ring is the lon/lat rectangle its id ZZ_RRRR_CCCC implies
  // (Web-Mercator tiles row..row+T, col..col+T; east unwrapped past 180 when it wraps).
  function tileLat(row, n) { return Math.atan(Math.sinh(Math.PI * (1 - 2 * row / n))) * 180 / Math.PI; }
  D.regions.forEach(function (r) {
    if (r.ring) return;
    var m = /^(\d{2})_(\d{4})_(\d{4})$/.exec(r.id), z = +m[1], row = +m[2], col = +m[3], n = Math.pow(2, z), t = D.region_tiles;
    var north = tileLat(row, n), south = tileLat(row + t, n), west = 360 * col / n - 180, east = 360 * (col + t) / n - 180;
    r.ring = [south, west, north, west, north, east, south, east];
  });
  D.queries.forEach(function (q) {
    var acc = 0;
    q.positives = q.pos.map(function (d) { acc += d; return acc; });
  });
  function latlngs(flat, shift) {
    var out = [];
    for (var i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1] + (shift || 0)]);
    return out;
  }
  function centerLon(flat) {
    var s = 0, n = 0;
    for (var i = 1; i < flat.length; i += 2) { s += flat[i]; n++; }
    return n ? s / n : 0;
  }
  // Move a region by a multiple of 360 degrees next to the query (antimeridian).
  function shiftNear(flat, lon0) {
    return 360 * Math.round((lon0 - centerLon(flat)) / 360);
  }

  var map = L.map("map", { attributionControl: false, zoomSnap: 0.25, worldCopyJump: false, minZoom: 1, maxZoom: 14 });
  L.control.scale({ imperial: false }).addTo(map);
  var bg = L.layerGroup().addTo(map);
  D.coverage.forEach(function (r) {
    L.polygon(latlngs(r), { stroke: false, fillColor: COLORS.cov, fillOpacity: 0.45, interactive: false }).addTo(bg);
  });
  D.coast.forEach(function (l) {
    L.polyline(latlngs(l), { color: COLORS.coast, weight: 1, opacity: 0.9, interactive: false }).addTo(bg);
  });

  // Graticule, redrawn for the visible area with about 6-12 lines each way.
  var grid = L.layerGroup().addTo(map);
  function drawGrid() {
    grid.clearLayers();
    var b = map.getBounds(), span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
    var steps = [0.25, 0.5, 1, 2, 5, 10, 20, 30], step = 30;
    for (var i = 0; i < steps.length; i++) { if (span / steps[i] <= 12) { step = steps[i]; break; } }
    var s = Math.max(-85, Math.floor(b.getSouth() / step) * step), n = Math.min(85, Math.ceil(b.getNorth() / step) * step);
    var w = Math.floor(b.getWest() / step) * step, e = Math.ceil(b.getEast() / step) * step;
    for (var lat = s; lat <= n + 1e-9; lat += step)
      L.polyline([[lat, w], [lat, e]], { color: COLORS.grid, weight: 0.7, interactive: false }).addTo(grid);
    for (var lon = w; lon <= e + 1e-9; lon += step)
      L.polyline([[s, lon], [n, lon]], { color: COLORS.grid, weight: 0.7, interactive: false }).addTo(grid);
  }
  map.on("moveend zoomend", drawGrid);
  map.on("mousemove", function (ev) {
    var lon = ((ev.latlng.lng + 180) % 360 + 360) % 360 - 180;
    document.getElementById("mouse").textContent = ev.latlng.lat.toFixed(3) + ", " + lon.toFixed(3);
  });

  var fg = L.layerGroup().addTo(map);
  // A Map, not an object: an id such as "__proto__" or "constructor" is just a key.
  var byId = new Map(), current = null, predLayers = [];
  D.queries.forEach(function (q, i) { if (!byId.has(q.id)) byId.set(q.id, i); });

  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]; }); }
  // Tooltip and popup content as DOM nodes: Leaflet inserts a string as HTML.
  function textNode(lines) {
    var div = document.createElement("div");
    [].concat(lines).forEach(function (line, i) {
      if (i) div.appendChild(document.createElement("br"));
      div.appendChild(document.createTextNode(String(line)));
    });
    return div;
  }
  function hitAt(q, k) { return q.first_hit !== null && q.first_hit <= k; }

  function summary() {
    var n = D.queries.length, withPred = D.queries.filter(function (q) { return q.preds.length; });
    var ks = [1, 5, 10].filter(function (k) { return k <= D.top_k; });
    var parts = ks.map(function (k) {
      var h = withPred.filter(function (q) { return hitAt(q, k); }).length;
      return "hit@" + k + " " + (withPred.length ? (100 * h / withPred.length).toFixed(1) : "-") + "%";
    });
    document.getElementById("summary").textContent = n + " queries, " + withPred.length + " with predictions; " + parts.join(", ");
  }

  function fillList(filter) {
    var ul = document.getElementById("list"), f = (filter || "").trim().toUpperCase(), html = [];
    D.queries.forEach(function (q, i) {
      if (f && q.id.toUpperCase().indexOf(f) < 0) return;
      var mark = q.preds.length ? (hitAt(q, 1) ? '<span class="r ok">R@1 \u2713</span>'
        : q.first_hit ? '<span class="r ok">first hit ' + q.first_hit + '</span>' : '<span class="r ko">miss</span>') : '<span class="r">-</span>';
      html.push('<li data-i="' + i + '"' + (current === i ? ' class="sel"' : "") + ">" + esc(q.id) + mark + "</li>");
    });
    ul.innerHTML = html.join("");
  }

  function select(i, fit) {
    var q = D.queries[i];
    current = i;
    fg.clearLayers();
    predLayers = [];
    var lon0 = centerLon(q.footprint), all = [];
    q.positives.forEach(function (ri) {
      var r = D.regions[ri], ll = latlngs(r.ring, shiftNear(r.ring, lon0));
      all.push.apply(all, ll);
      L.polygon(ll, { color: COLORS.pos, weight: 1, opacity: 0.9, fillColor: COLORS.pos, fillOpacity: 0.08 })
        .bindTooltip(textNode("positive " + r.id)).addTo(fg);
    });
    var fp = latlngs(q.footprint);
    all.push.apply(all, fp);
    L.polygon(fp, { color: COLORS.fp, weight: 2.5, dashArray: "6 4", fillOpacity: 0.05 }).bindTooltip(textNode("footprint " + q.id)).addTo(fg);
    // Worst rank first, so rank 1 is drawn on top; a region retrieved at several ranks is framed once, at its best.
    var drawn = {};
    q.preds.forEach(function (p, k) { if (!(p[0] in drawn)) drawn[p[0]] = k; });
    for (var k = q.preds.length - 1; k >= 0; k--) {
      var p = q.preds[k];
      if (drawn[p[0]] !== k) { predLayers[k] = null; continue; }
      var r = D.regions[p[0]], ll = latlngs(r.ring, shiftNear(r.ring, lon0)), cls = p[3] ? "hit" : "miss";
      all.push.apply(all, ll);
      var poly = L.polygon(ll, { color: COLORS[cls], weight: 3, opacity: 1, fillColor: COLORS[cls], fillOpacity: 0.12 })
        .bindTooltip(textNode(String(k + 1)), { permanent: true, direction: "center", className: "rank " + cls })
        .bindPopup(textNode(["rank " + (k + 1) + ": " + r.id, "score " + p[1] + ", angle " + p[2] + "\u00b0"].concat(p[3] ? ["positive"] : [])))
        .addTo(fg);
      predLayers[k] = poly;
    }
    var pred0 = q.preds.length ? q.preds[0][2] + "\u00b0" : "-";
    var rows = q.preds.map(function (p, k) {
      return '<tr class="' + (p[3] ? "hit" : "miss") + '" data-k="' + k + '"><td>' + (k + 1) + "</td><td>" + esc(D.regions[p[0]].id) +
        "</td><td>" + p[1].toFixed(3) + "</td><td>" + p[2] + "\u00b0</td><td>" + (p[3] ? "\u2713" : "\u2717") + "</td></tr>";
    }).join("");
    var img = q.thumb ? '<img id="thumb" alt="query photo" src="' + q.thumb + '">' : "<p><i>no thumbnail embedded</i></p>";
    document.getElementById("detail").innerHTML =
      '<h2 id="qid">' + esc(q.id) + "</h2>" + img +
      "<div>photo orientation: " + esc(q.orientation || "-") + "; predicted rotation (rank 1): <b id='angle'>" + pred0 + "</b></div>" +
      "<div>nadir: " + (q.nadir ? q.nadir[0] + ", " + q.nadir[1] : "-") + "; positives: " + q.positives.length +
      "; first positive at rank " + (q.first_hit || "-") + "</div>" +
      "<table><tr><th>#</th><th>region</th><th>score</th><th>angle</th><th>pos</th></tr>" + rows + "</table>";
    document.querySelectorAll("#detail tr[data-k]").forEach(function (tr) {
      tr.addEventListener("click", function () {
        var lay = predLayers[+tr.getAttribute("data-k")];
        if (lay) { map.fitBounds(lay.getBounds(), { maxZoom: 9 }); lay.openPopup(); }
      });
    });
    if (fit !== false && all.length) map.fitBounds(L.latLngBounds(all), { padding: [20, 20] });
    document.querySelectorAll("#list li").forEach(function (li) { li.classList.toggle("sel", +li.getAttribute("data-i") === i); });
    var hash = null;
    try { hash = "#q=" + encodeURIComponent(q.id); } catch (e) { /* a lone surrogate: no hash */ }
    if (hash !== null && location.hash !== hash) history.replaceState(null, "", hash);
    document.body.setAttribute("data-query", q.id);
  }

  document.getElementById("list").addEventListener("click", function (ev) {
    var li = ev.target.closest("li");
    if (li) select(+li.getAttribute("data-i"));
  });
  var search = document.getElementById("search");
  search.addEventListener("input", function () { fillList(search.value); });
  search.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") return;
    var first = document.querySelector("#list li");
    if (first) select(+first.getAttribute("data-i"));
  });
  // The query named by "#q=<id>", or null: a hash that does not decode (e.g. "%E0%A4%A")
  // or names no query is ignored.
  function fromHash() {
    var m = /^#q=(.+)$/.exec(location.hash), id;
    if (!m) return null;
    try { id = decodeURIComponent(m[1]); } catch (e) { return null; }
    return byId.has(id) ? byId.get(id) : null;
  }
  window.addEventListener("hashchange", function () { var i = fromHash(); if (i !== null && i !== current) select(i); });

  summary();
  fillList("");
  map.setView([20, 0], 2);
  drawGrid();
  if (D.queries.length) select(fromHash() !== null ? fromHash() : 0);
  window.auditPage = { data: D, map: map, layers: fg, select: function (id) { if (byId.has(id)) select(byId.get(id)); } };
  document.body.setAttribute("data-ready", "1");
})();
