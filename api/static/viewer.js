// Lamina slide viewer: a slide in OpenSeadragon (deep-zoom tiles from the API), the hit's tile
// outlined, the other hits of the slide marked, the tissue mask as an SVG overlay, and region
// search by drawing a box.
//
// URL: /viewer?collection=C&tile=ID  or  /viewer?collection=C&source=SOURCE_ID
//   hits=ID[:SCORE],ID[:SCORE],...  other hits of the query (tile ids; those on this slide are
//                                   marked); score=S  the opened tile's score.
// Without `hits`, sessionStorage "lamina-viewer-hits" may hold
//   {"collection": C, "hits": [{tile_id, score, source_id, x, y, size_px}, ...]}
// (search API hits as they come): those of this collection and slide are marked.
// All coordinates are level-0 pixels of the slide.
(function () {
  "use strict";
  const API = document.body.dataset.api;
  const needsToken = document.body.dataset.auth === "yes";
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_URL_HITS = 200;
  const REGION_K = 12;
  const MIN_BOX_PX = 16;
  const HITS_KEY = "lamina-viewer-hits";

  const params = new URLSearchParams(location.search);
  const st = {
    collection: params.get("collection") || "",
    tile: null, // the opened tile's record (GET /tiles/{id})
    score: null,
    sourceId: null,
    dzi: null,
    viewer: null,
    hits: [], // other hits on this slide: {tile_id, score, x, y, size_px}
    drawMode: false,
    drag: null,
    layer: null, // <g> in level-0 coordinates
  };
  window.laminaViewer = st; // read by the browser tests

  function token() { return sessionStorage.getItem("lamina-token") || ""; }
  function headers() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }
  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.className = isError ? "error" : "muted";
  }
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, headers());
    const resp = await fetch(API + path, opts);
    const body = await resp.json().catch(() => ({ ok: false, error: resp.statusText }));
    if (resp.status === 401) $("token-box").hidden = false;
    if (!resp.ok || body.ok === false) {
      const err = new Error((body.code ? body.code + ": " : "") + (body.error || resp.statusText));
      err.code = body.code;
      err.status = resp.status;
      throw err;
    }
    return body;
  }
  const enc = encodeURIComponent;
  function sourcePath(sid) {
    return "/collections/" + enc(st.collection) + "/sources/" + enc(sid);
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || v === "") return "—";
    return typeof v === "number" && digits !== undefined ? v.toFixed(digits) : String(v);
  }
  function viewerUrl(tileId, score, hitIds) {
    const q = new URLSearchParams({ collection: st.collection, tile: String(tileId) });
    if (score !== null && score !== undefined) q.set("score", Number(score).toFixed(4));
    if (hitIds && hitIds.length) q.set("hits", hitIds.join(","));
    return "/viewer?" + q.toString();
  }

  // -- the other hits of the query ------------------------------------------------------------
  function parseUrlHits() {
    const raw = params.get("hits");
    if (!raw) return null;
    const out = [];
    for (const part of raw.split(",").slice(0, MAX_URL_HITS)) {
      const [id, score] = part.split(":");
      if (/^\d+$/.test(id || "")) out.push({ tile_id: Number(id), score: score ? Number(score) : null });
    }
    return out;
  }
  function storedHits() {
    try {
      const doc = JSON.parse(sessionStorage.getItem(HITS_KEY) || "null");
      if (!doc || doc.collection !== st.collection || !Array.isArray(doc.hits)) return [];
      return doc.hits.filter((h) => h && Number.isFinite(Number(h.tile_id)));
    } catch (e) { return []; }
  }
  async function tileRecords(ids) {
    // the records of tile ids (4 requests at a time); unknown ids are left out
    const out = [];
    let next = 0;
    async function worker() {
      while (next < ids.length) {
        const id = ids[next++];
        try {
          out.push((await api("/tiles/" + id + "?collection=" + enc(st.collection))).tile);
        } catch (e) { /* a hit of another snapshot: not marked */ }
      }
    }
    await Promise.all([worker(), worker(), worker(), worker()]);
    return out;
  }
  async function loadHits() {
    const fromUrl = parseUrlHits();
    let hits;
    if (fromUrl) {
      const scores = new Map(fromUrl.map((h) => [h.tile_id, h.score]));
      const records = await tileRecords(fromUrl.map((h) => h.tile_id));
      hits = records.map((r) => Object.assign({}, r, { score: scores.get(r.tile_id) }));
    } else {
      hits = storedHits();
    }
    const own = st.tile ? st.tile.tile_id : null;
    const seen = new Set();
    st.hits = [];
    for (const h of hits) {
      if (h.source_id !== st.sourceId) continue;
      if (h.tile_id === own) { if (st.score === null && h.score != null) st.score = Number(h.score); continue; }
      if (seen.has(h.tile_id)) continue;
      seen.add(h.tile_id);
      st.hits.push({ tile_id: Number(h.tile_id), score: h.score == null ? null : Number(h.score),
        x: Number(h.x), y: Number(h.y), size_px: Number(h.size_px) });
    }
    st.hits.sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity) || a.tile_id - b.tile_id);
  }

  // -- overlays -----------------------------------------------------------------------------
  function imageRect(x, y, w, h) {
    return st.viewer.viewport.imageToViewportRectangle(x, y, w, h);
  }
  function addBoxOverlay(id, className, x, y, size, title) {
    const el = document.createElement("div");
    if (id) el.id = id;
    el.className = className;
    if (title) el.title = title;
    st.viewer.addOverlay({ element: el, location: imageRect(x, y, size, size) });
    return el;
  }
  function drawHitOverlays() {
    for (const el of document.querySelectorAll(".hit-marker")) st.viewer.removeOverlay(el);
    for (const h of st.hits) {
      const el = addBoxOverlay(null, "hit-marker", h.x, h.y, h.size_px,
        "tile " + h.tile_id + (h.score != null ? " · score " + h.score.toFixed(3) : ""));
      el.dataset.tileId = String(h.tile_id);
    }
    const list = $("slide-hits");
    list.innerHTML = "";
    $("slide-hits-count").textContent = "(" + st.hits.length + ")";
    const ids = [st.tile ? st.tile.tile_id : null].concat(st.hits.map((h) => h.tile_id)).filter((v) => v !== null);
    for (const h of st.hits) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.className = "hit-open-viewer";
      a.href = viewerUrl(h.tile_id, h.score, ids);
      a.textContent = "tile " + h.tile_id;
      li.appendChild(a);
      li.appendChild(document.createTextNode(
        " · " + fmt(h.score, 3) + " · x " + h.x + ", y " + h.y));
      list.appendChild(li);
    }
  }
  function makeSvgLayer() {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "svg-overlay");
    const g = document.createElementNS(SVG_NS, "g");
    g.id = "image-layer";
    svg.appendChild(g);
    for (const id of ["tissue-layer", "draw-layer"]) {
      const sub = document.createElementNS(SVG_NS, "g");
      sub.id = id;
      g.appendChild(sub);
    }
    st.viewer.canvas.appendChild(svg);
    st.layer = g;
    const sync = () => {
      const vp = st.viewer.viewport;
      const w = st.dzi.width;
      const p0 = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
      const p1 = vp.imageToViewerElementCoordinates(new OpenSeadragon.Point(w, 0));
      const s = (p1.x - p0.x) / w;
      g.setAttribute("transform", "translate(" + p0.x + " " + p0.y + ") scale(" + s + ")");
    };
    for (const ev of ["animation", "update-viewport", "resize", "open"]) st.viewer.addHandler(ev, sync);
    sync();
  }
  function ringPath(ring) {
    return ring.map((p, i) => (i ? "L" : "M") + p[0] + " " + p[1]).join(" ") + " Z";
  }
  async function drawTissue() {
    const layer = $("tissue-layer");
    let doc;
    try {
      doc = await api(sourcePath(st.sourceId) + "/qc.geojson");
    } catch (e) {
      $("toggle-tissue").disabled = true;
      $("toggle-tissue").parentElement.title = "no tissue mask: " + e.message;
      return 0;
    }
    let n = 0;
    for (const f of doc.features || []) {
      if (!f || !f.properties || f.properties.kind !== "tissue" || !f.geometry) continue;
      const geom = f.geometry;
      const polys = geom.type === "Polygon" ? [geom.coordinates]
        : geom.type === "MultiPolygon" ? geom.coordinates : [];
      for (const poly of polys) {
        const path = document.createElementNS(SVG_NS, "path");
        path.setAttribute("class", "tissue");
        path.setAttribute("d", poly.map(ringPath).join(" "));
        layer.appendChild(path);
        n += 1;
      }
    }
    return n;
  }

  // -- region search by drawing a box ------------------------------------------------------------
  function setDrawMode(on) {
    st.drawMode = on;
    $("draw-box").setAttribute("aria-pressed", on ? "true" : "false");
    $("osd").classList.toggle("drawing", on);
  }
  function imagePoint(event) {
    return st.viewer.viewport.viewerElementToImageCoordinates(event.position);
  }
  function boxOf(a, b) {
    const W = st.dzi.width, H = st.dzi.height;
    const x0 = Math.max(0, Math.min(a.x, b.x)), y0 = Math.max(0, Math.min(a.y, b.y));
    const x1 = Math.min(W, Math.max(a.x, b.x)), y1 = Math.min(H, Math.max(a.y, b.y));
    return { x: Math.round(x0), y: Math.round(y0), w: Math.round(x1 - x0), h: Math.round(y1 - y0) };
  }
  function showBox(box, className) {
    const layer = $("draw-layer");
    let rect = layer.querySelector("rect." + className);
    if (!rect) {
      rect = document.createElementNS(SVG_NS, "rect");
      rect.setAttribute("class", className);
      layer.appendChild(rect);
    }
    rect.setAttribute("x", box.x); rect.setAttribute("y", box.y);
    rect.setAttribute("width", Math.max(box.w, 1)); rect.setAttribute("height", Math.max(box.h, 1));
  }
  function installDrawing() {
    const v = st.viewer;
    v.addHandler("canvas-press", (e) => {
      const shift = e.originalEvent && e.originalEvent.shiftKey;
      if (!st.drawMode && !shift) return;
      st.drag = { start: imagePoint(e), box: null };
    });
    v.addHandler("canvas-drag", (e) => {
      if (!st.drag) return;
      e.preventDefaultAction = true;
      st.drag.box = boxOf(st.drag.start, imagePoint(e));
      showBox(st.drag.box, "draw-box");
    });
    v.addHandler("canvas-click", (e) => { if (st.drawMode || st.drag) e.preventDefaultAction = true; });
    v.addHandler("canvas-release", () => {
      const drag = st.drag;
      st.drag = null;
      if (!drag || !drag.box) return;
      if (drag.box.w < MIN_BOX_PX || drag.box.h < MIN_BOX_PX) {
        setStatus("The box is too small: drag at least " + MIN_BOX_PX + " slide pixels.", true);
        return;
      }
      setDrawMode(false);
      regionSearch(drag.box);
    });
  }
  async function regionSearch(box) {
    showBox(box, "query-box");
    const q = $("draw-layer").querySelector("rect.draw-box");
    if (q) q.remove();
    $("region-query").textContent = "Region x " + box.x + ", y " + box.y + ", " + box.w + " × " + box.h + " px";
    setStatus("Searching by the region…");
    try {
      const body = await api("/collections/" + enc(st.collection) + "/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ region: Object.assign({ slide: st.sourceId }, box), k: REGION_K }),
      });
      showRegionHits(body.hits || []);
      setStatus(body.hits.length + " hits for the region (snapshot " + body.snapshot + ").");
    } catch (e) {
      setStatus(e.message, true);
    }
  }
  function showRegionHits(hits) {
    for (const el of document.querySelectorAll(".region-hit")) st.viewer.removeOverlay(el);
    const list = $("region-hits");
    list.innerHTML = "";
    $("region-count").textContent = "(" + hits.length + ")";
    for (const h of hits) {
      const same = hits.filter((o) => o.source_id === h.source_id).map((o) => o.tile_id);
      const li = document.createElement("li");
      li.dataset.tileId = String(h.tile_id);
      const a = document.createElement("a");
      a.className = "hit-open-viewer";
      a.href = viewerUrl(h.tile_id, h.score, same);
      a.textContent = "tile " + h.tile_id;
      li.appendChild(a);
      const name = String(h.source || "").split("/").pop();
      li.appendChild(document.createTextNode(
        " · " + fmt(h.score, 3) + " · " + name + " · x " + h.x + ", y " + h.y));
      list.appendChild(li);
      if (h.source_id === st.sourceId && h.kind === "tile") {
        const el = addBoxOverlay(null, "region-hit", h.x, h.y, h.size_px, "region hit " + h.tile_id);
        el.dataset.tileId = String(h.tile_id);
      }
    }
  }

  // -- info panel -----------------------------------------------------------------------------
  function showInfo() {
    const dl = $("tile-info");
    dl.innerHTML = "";
    const rows = [];
    const t = st.tile;
    if (t) {
      rows.push(["tile", t.tile_id], ["x", t.x], ["y", t.y], ["level", t.level],
        ["size (level-0 px)", t.size_px], ["tile px", t.tile_px], ["µm/px", fmt(t.mpp, 3)],
        ["tissue", t.tissue_fraction == null ? "—" : (100 * t.tissue_fraction).toFixed(0) + " %"],
        ["score", fmt(st.score, 4)]);
      for (const [k, v] of Object.entries(t.metadata || {})) rows.push([k, fmt(v)]);
    }
    if (st.dzi) {
      rows.push(["slide", st.dzi.width + " × " + st.dzi.height + " px"],
        ["slide µm/px", fmt(st.slideMpp, 3)]);
    }
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      dd.dataset.field = k;
      dl.append(dt, dd);
    }
  }

  // -- opening --------------------------------------------------------------------------------
  async function showPhoto(sid) {
    const resp = await fetch(API + "/sources/" + enc(sid) + "/thumbnail?collection=" + enc(st.collection),
      { headers: headers() });
    if (!resp.ok) return;
    const img = $("photo");
    img.src = URL.createObjectURL(await resp.blob());
    img.hidden = false;
  }
  function openSlide() {
    const d = st.dzi;
    const base = API + sourcePath(st.sourceId) + "/";
    const withToken = !!token();
    st.viewer = OpenSeadragon({
      id: "osd",
      prefixUrl: document.body.dataset.osdImages,
      drawer: "canvas",
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      imageLoaderLimit: 4, // the server admits MAX_INFLIGHT data requests at once
      tileRetryMax: 3,
      tileRetryDelay: 700,
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.5,
      loadTilesWithAjax: withToken,
      ajaxHeaders: withToken ? headers() : {},
      tileSources: {
        width: d.width,
        height: d.height,
        tileSize: d.tile_size,
        tileOverlap: d.overlap,
        minLevel: 0,
        maxLevel: d.levels - 1,
        getTileUrl: (level, x, y) => base + d.tiles.replace("{level}", level)
          .replace("{col}", x).replace("{row}", y),
      },
    });
    return new Promise((resolve, reject) => {
      st.viewer.addOnceHandler("open", resolve);
      st.viewer.addOnceHandler("open-failed", (e) => reject(new Error(e.message || "cannot open")));
    });
  }
  async function main() {
    const tileParam = params.get("tile");
    const sourceParam = params.get("source");
    if (tileParam && !/^\d+$/.test(tileParam)) throw new Error("tile must be a tile id (a number)");
    if (tileParam) {
      const body = await api("/tiles/" + tileParam + "?collection=" + enc(st.collection));
      st.collection = body.collection;
      st.tile = body.tile;
      st.sourceId = body.tile.source_id;
    } else if (sourceParam) {
      if (!st.collection) throw new Error("add ?collection=NAME to open a source");
      st.sourceId = sourceParam;
    } else {
      throw new Error("open a hit: /viewer?collection=NAME&tile=TILE_ID (or &source=SOURCE_ID)");
    }
    const s = Number(params.get("score"));
    st.score = params.get("score") && Number.isFinite(s) ? s : null;
    let desc;
    try {
      desc = await api(sourcePath(st.sourceId) + "/dzi");
    } catch (e) {
      if (e.code !== "NOT_A_SLIDE") throw e;
      // a photo: no pyramid to zoom into; its image and the tile's record instead
      await showPhoto(st.sourceId);
      $("osd").hidden = true;
      showInfo();
      setStatus("A photo has no deep-zoom pyramid: its image is shown in the panel.");
      document.body.dataset.ready = "photo";
      return;
    }
    st.dzi = desc.dzi;
    st.slideMpp = desc.mpp;
    $("slide-name").textContent = desc.source || st.sourceId.slice(0, 12);
    document.title = "Lamina — " + (desc.source || "slide");
    await loadHits();
    await openSlide();
    makeSvgLayer();
    installDrawing();
    const t = st.tile;
    if (t) {
      addBoxOverlay("hit-outline", "hit-outline", t.x, t.y, t.size_px,
        "tile " + t.tile_id + " (x " + t.x + ", y " + t.y + ", " + t.size_px + " px)");
      const pad = 3 * t.size_px;
      st.viewer.viewport.fitBounds(imageRect(t.x - pad, t.y - pad, t.size_px + 2 * pad, t.size_px + 2 * pad), true);
    }
    drawHitOverlays();
    showInfo();
    const n = await drawTissue();
    setStatus((t ? "Tile " + t.tile_id + " outlined; " : "") + st.hits.length + " other hits on this slide" +
      (n ? "; tissue mask: " + n + " regions." : "."));
    document.body.dataset.ready = "yes";
  }

  $("toggle-tissue").addEventListener("change", (e) => { $("tissue-layer").style.display = e.target.checked ? "" : "none"; });
  $("toggle-hits").addEventListener("change", (e) => { $("osd").classList.toggle("hide-hits", !e.target.checked); });
  $("draw-box").addEventListener("click", () => setDrawMode(!st.drawMode));
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || (!st.drawMode && !st.drag)) return;
    st.drag = null;
    const box = $("draw-layer") && $("draw-layer").querySelector("rect.draw-box");
    if (box) box.remove();
    setDrawMode(false);
  });
  $("token-save").addEventListener("click", () => {
    sessionStorage.setItem("lamina-token", $("token").value.trim());
    location.reload();
  });
  if (needsToken && !token()) {
    $("token-box").hidden = false;
    setStatus("This server needs an API token.", true);
  } else {
    main().catch((e) => { setStatus(e.message, true); document.body.dataset.ready = "error"; });
  }
})();
