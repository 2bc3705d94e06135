// Lamina web page, facets: the collection's filterable columns with their values and counts
// (GET /collections/{c}/facets). A click on a value adds it to the filter box (COL=V, or V
// appended to an existing COL= line; a JSON filter gains an "in" entry) and searches again.
// The filter placeholder and the exclude-same and group-by choices come from the same columns.
(function () {
  "use strict";
  const L = window.Lamina;
  const $ = L.$;

  const SHOWN = 8; // value chips shown per column before "+N more"
  const escapeValue = (v) => String(v).replace(/\\/g, "\\\\").replace(/,/g, "\\,");
  const lineColumn = (line) => { const m = /^\s*([^!<>=]+?)\s*=(?!=)/.exec(line); return m ? m[1] : null; };

  // Add COL=VALUE to the filter text (lines or JSON); returns the new text.
  L.withFilterValue = function (text, column, value) {
    const t = (text || "").trim();
    if (t.startsWith("{")) {
      const obj = JSON.parse(t);
      const cur = obj[column];
      const list = cur && Array.isArray(cur.in) ? cur.in : cur != null && typeof cur !== "object" ? [cur] : [];
      if (!list.includes(value)) list.push(value);
      obj[column] = { in: list };
      return JSON.stringify(obj);
    }
    const lines = t ? t.split(/\r?\n/) : [];
    const at = lines.findIndex((l) => lineColumn(l) === column);
    if (at < 0) lines.push(column + "=" + escapeValue(value));
    else {
      const have = lines[at].slice(lines[at].indexOf("=") + 1).split(/(?<!\\),/).map((s) => s.trim());
      if (!have.includes(escapeValue(value))) lines[at] = lines[at].replace(/\s+$/, "") + "," + escapeValue(value);
    }
    return lines.join("\n");
  };
  L.withFilterLine = function (text, line) {
    const t = (text || "").trim();
    return t ? t + "\n" + line : line;
  };

  function apply(text) {
    $("filter").value = text;
    L.rerun();
  }

  function chip(label, title, onClick) {
    const b = L.el("button", "facet-value", label);
    b.type = "button";
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  function render(doc) {
    const box = $("facets");
    box.innerHTML = "";
    if (!doc.columns.length) {
      box.appendChild(L.el("p", "muted", "No metadata columns: index with a manifest to filter by labels."));
      return;
    }
    for (const c of doc.columns) {
      const col = L.el("div", "facet");
      col.dataset.column = c.name;
      const head = L.el("div", "facet-name");
      head.append(L.el("strong", null, c.name), L.el("span", "muted", " " + c.type.toLowerCase() +
        (c.n_null ? " · " + c.n_null + " empty" : "")));
      col.appendChild(head);
      const values = L.el("div", "facet-values");
      if (c.kind === "numeric") {
        if (c.count) {
          const mid = (c.min + c.max) / 2;
          const at = Number.isInteger(c.min) && Number.isInteger(c.max) ? Math.round(mid) : Number(mid.toPrecision(3));
          values.append(L.el("span", "muted", c.min + " – " + c.max + " (" + c.count + ") "),
            chip("≥ " + at, "add " + c.name + ">=" + at, () => apply(L.withFilterLine($("filter").value, c.name + ">=" + at))),
            chip("< " + at, "add " + c.name + "<" + at, () => apply(L.withFilterLine($("filter").value, c.name + "<" + at))));
        }
      } else if (c.top.length && c.top[0].n === 1 && c.n_distinct > SHOWN) {
        // an identifier (file name, image id): no value is shared, so none is worth a chip
        values.appendChild(L.el("span", "muted", c.n_distinct + " distinct values, one tile each"));
      } else {
        c.top.forEach((v, i) => {
          const b = chip(v.value + " (" + v.n + ")", "add " + c.name + "=" + v.value, () => {
            try { apply(L.withFilterValue($("filter").value, c.name, v.value)); }
            catch (e) { L.setStatus("filter: " + e.message, true); }
          });
          b.dataset.value = v.value;
          b.hidden = i >= SHOWN;
          values.appendChild(b);
        });
        const rest = c.n_distinct - Math.min(c.top.length, SHOWN);
        if (rest > 0) {
          const more = chip("+" + rest + " more", "show more values", () => {
            for (const b of values.querySelectorAll(".facet-value[hidden]")) b.hidden = false;
            more.remove();
            if (c.truncated) values.appendChild(L.el("span", "muted", " … " + c.n_distinct + " values in all"));
          });
          more.classList.add("facet-more");
          if (c.top.length > SHOWN) values.appendChild(more);
          else values.appendChild(L.el("span", "muted", " … " + c.n_distinct + " values in all"));
        }
      }
      col.appendChild(values);
      box.appendChild(col);
    }
  }

  // An example filter taken from this collection's own columns (never another collection's):
  // a label-like text column (2-20 values) and a measurement-like numeric one (more than 20
  // values, yet fewer than half the tiles: not a code, not an id).
  L.placeholderFor = function (doc) {
    const fileNames = (c) => c.top.some((v) => /\.[A-Za-z0-9]{2,5}$/.test(v.value)); // a manifest's key column
    const text = doc.columns.find((c) => c.kind === "text" && c.n_distinct >= 2 && c.n_distinct <= 20 && !fileNames(c));
    const num = doc.columns.find((c) => c.kind === "numeric" && c.n_distinct > 20 && c.n_distinct < c.count / 2) ||
      doc.columns.find((c) => c.kind === "numeric" && c.n_distinct > 1);
    const lines = [];
    if (text) lines.push(text.name + "=" + text.top.slice(0, 2).map((v) => escapeValue(v.value)).join(","));
    if (num) lines.push(num.name + ">=" + (Number.isInteger(num.min) ? Math.round((num.min + num.max) / 2) : num.min));
    if (!lines.length) return doc.columns.length ? doc.columns[0].name + "=VALUE" : "no metadata columns to filter on";
    return lines.join("\n") + "   (one per line, or JSON)";
  };

  function fill(sel, opts) {
    const keep = sel.value;
    sel.innerHTML = "";
    for (const [v, label] of opts) {
      const o = L.el("option", null, label);
      o.value = v;
      sel.appendChild(o);
    }
    if (opts.some((o) => o[0] === keep)) sel.value = keep;
  }
  // Exclude-same and group-by choices: the source, then the collection's text columns.
  function fillChoosers(doc) {
    const text = doc.columns.filter((c) => c.kind === "text" && c.n_distinct > 1);
    fill($("exclude-same"), [["", "off"], ["source_id", "same source (slide or photo)"]]
      .concat(text.map((c) => [c.name, c.name])));
    const patient = text.some((c) => c.name === "patient_id");
    fill($("group-by"), [["", "none"], ["slide", "slide / photo"]]
      .concat(patient ? [["patient", "patient"]] : [])
      .concat(text.filter((c) => c.name !== "patient_id").map((c) => [c.name, c.name])));
  }

  L.loadFacets = async function (collection) {
    $("facets").textContent = "loading…";
    try {
      const doc = await L.api("/collections/" + encodeURIComponent(collection) + "/facets");
      if (collection !== L.collection()) return;
      L.state.facets = doc;
      render(doc);
      $("filter").placeholder = L.placeholderFor(doc);
      fillChoosers(doc);
    } catch (e) {
      $("facets").textContent = e.message;
    }
  };
})();
