// onnx-fuse diff page: selection linking both graphs, zoom/pan, search, stepping through fused nodes.
// No network, no libraries: everything the page needs is in the page.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("fuser-diff-data").textContent);
  var SIDES = { L: D.left, R: D.right };
  var LABEL = { L: "original", R: "fused" };
  var views = { L: document.getElementById("view-L"), R: document.getElementById("view-R") };
  var zoom = { L: 1, R: 1 };
  var marked = [];
  var current = null;
  var byName = { L: {}, R: {} };
  ["L", "R"].forEach(function (s) {
    SIDES[s].nodes.forEach(function (n, i) { byName[s][n[0]] = i; });
  });
  // the fused nodes in graph order, for n / p
  var fusedOrder = [];
  D.right.nodes.forEach(function (n, i) {
    var g = n[4];
    if (g >= 0 && D.groups[g].kind === "fused" && D.groups[g].fused[0] === i) fusedOrder.push(i);
  });

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function other(s) { return s === "L" ? "R" : "L"; }
  function node(s, i) { return SIDES[s].nodes[i]; }
  function elem(s, i) { return document.getElementById(s + i); }
  function group(s, i) { var g = node(s, i)[4]; return g >= 0 ? D.groups[g] : null; }
  function counterparts(s, i) { return (s === "L" ? D.l2r : D.r2l)[String(i)] || []; }
  function related(s, i) {
    var g = group(s, i);
    if (g) return { L: g.sources, R: g.fused };
    var c = counterparts(s, i);
    return s === "L" ? { L: [i], R: c } : { L: c, R: [i] };
  }
  function link(s, i, extra) {
    var n = node(s, i);
    return '<a href="#' + s + ":" + esc(n[0]) + '" class="nl" data-s="' + s + '" data-i="' + i + '"' +
      (extra || "") + ">" + esc(n[0]) + "</a> <span class=\"k\">" + esc(n[1]) + "</span>";
  }

  // ---- zoom and pan ----
  function svgOf(s) { return views[s].querySelector("svg"); }
  function box(s) { var vb = svgOf(s).viewBox.baseVal; return { w: vb.width || 1, h: vb.height || 1 }; }
  function setZoom(s, z, cx, cy) {
    var v = views[s], b = box(s), old = zoom[s];
    z = Math.max(0.03, Math.min(4, z));
    if (cx === undefined) { cx = v.clientWidth / 2; cy = v.clientHeight / 2; }
    var fx = (v.scrollLeft + cx) / old, fy = (v.scrollTop + cy) / old;
    zoom[s] = z;
    var svg = svgOf(s);
    svg.style.width = (b.w * z) + "px";
    svg.style.height = (b.h * z) + "px";
    v.scrollLeft = fx * z - cx;
    v.scrollTop = fy * z - cy;
  }
  function fitWidth(s) {
    var v = views[s], b = box(s);
    setZoom(s, Math.max(0.25, Math.min(1.4, (v.clientWidth - 24) / b.w)));
  }
  function fitAll(s) {
    var v = views[s], b = box(s);
    setZoom(s, Math.min((v.clientWidth - 24) / b.w, (v.clientHeight - 24) / b.h, 1.4));
  }
  document.querySelectorAll(".zoom button").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var s = btn.dataset.side, k = btn.dataset.zoom;
      if (k === "+") setZoom(s, zoom[s] * 1.25);
      else if (k === "-") setZoom(s, zoom[s] / 1.25);
      else if (k === "w") fitWidth(s);
      else fitAll(s);
    });
  });
  ["L", "R"].forEach(function (s) {
    var v = views[s], drag = null, moved = false;
    v.addEventListener("wheel", function (ev) {
      if (!ev.ctrlKey && !ev.metaKey) return;
      ev.preventDefault();
      var r = v.getBoundingClientRect();
      setZoom(s, zoom[s] * (ev.deltaY < 0 ? 1.15 : 1 / 1.15), ev.clientX - r.left, ev.clientY - r.top);
    }, { passive: false });
    v.addEventListener("mousedown", function (ev) {
      if (ev.button !== 0) return;
      drag = { x: ev.clientX, y: ev.clientY, l: v.scrollLeft, t: v.scrollTop };
      moved = false;
    });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) return;
      var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (!moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      moved = true;
      v.classList.add("dragging");
      v.scrollLeft = drag.l - dx;
      v.scrollTop = drag.t - dy;
    });
    window.addEventListener("mouseup", function () { drag = null; v.classList.remove("dragging"); });
    v.addEventListener("click", function (ev) {
      if (moved) { moved = false; return; }
      var g = ev.target.closest ? ev.target.closest("g.node") : null;
      if (!g || !g.id) return;
      var to = /(?:^|\s)to-(\S+)/.exec(g.getAttribute("class") || "");
      if (to) { // the stub of a long edge: go to its producer
        g = document.getElementById(to[1]);
        if (!g) return;
        if (!/^[LR][0-9]+$/.test(g.id)) { revealElement(g); return; }
      }
      var id = g.id, side = id.charAt(0), rest = id.slice(1);
      if (!/^[0-9]+$/.test(rest)) return; // graph input / output
      select(side, parseInt(rest, 10), { from: "click" });
    });
  });

  // ---- selection ----
  // scroll so that the nodes (their bounding box) sit in the middle of the view, the first one in view
  function reveal(s, list) {
    var es = [].concat(list).map(function (i) { return elem(s, i); }).filter(Boolean);
    if (!es.length) return;
    var v = views[s], vr = v.getBoundingClientRect(), b = null;
    es.forEach(function (e) {
      var r = e.getBoundingClientRect();
      b = b ? { l: Math.min(b.l, r.left), t: Math.min(b.t, r.top), r: Math.max(b.r, r.right), b: Math.max(b.b, r.bottom) }
        : { l: r.left, t: r.top, r: r.right, b: r.bottom };
    });
    var first = es[0].getBoundingClientRect();
    var cx = (b.r - b.l < v.clientWidth ? (b.l + b.r) / 2 : first.left + first.width / 2);
    var cy = (b.b - b.t < v.clientHeight - 40 ? (b.t + b.b) / 2 : first.top + v.clientHeight / 2 - 40);
    v.scrollLeft += cx - (vr.left + v.clientWidth / 2);
    v.scrollTop += cy - (vr.top + v.clientHeight / 2);
  }
  function revealElement(e) {
    var v = e.closest(".view"), r = e.getBoundingClientRect(), vr = v.getBoundingClientRect();
    v.scrollLeft += r.left + r.width / 2 - (vr.left + v.clientWidth / 2);
    v.scrollTop += r.top + r.height / 2 - (vr.top + v.clientHeight / 2);
  }
  function clear() {
    marked.forEach(function (e) { e.classList.remove("sel", "rel"); });
    marked = [];
    views.L.classList.remove("has-sel");
    views.R.classList.remove("has-sel");
    document.querySelectorAll("#fusion-table tr.cur").forEach(function (tr) { tr.classList.remove("cur"); });
  }
  function mark(s, i, cls) {
    var e = elem(s, i);
    if (e) { e.classList.add(cls); marked.push(e); }
  }
  function select(s, i, opts) {
    opts = opts || {};
    if (!node(s, i)) return;
    clear();
    var rel = related(s, i);
    ["L", "R"].forEach(function (t) {
      rel[t].forEach(function (j) { mark(t, j, t === s && j === i ? "sel" : "rel"); });
      if (rel[t].length) views[t].classList.add("has-sel");
    });
    views[s].classList.add("has-sel");
    if (opts.from !== "click") reveal(s, rel[s].indexOf(i) >= 0 ? [i].concat(rel[s]) : [i]);
    reveal(other(s), rel[other(s)]);
    var gi = node(s, i)[4];
    if (gi >= 0) {
      var tr = document.querySelector('#fusion-table tr[data-g="' + gi + '"]');
      if (tr) { tr.classList.add("cur"); if (opts.from !== "table") tr.scrollIntoView({ block: "nearest" }); }
    }
    current = { side: s, index: i, name: node(s, i)[0], left: rel.L.slice(), right: rel.R.slice() };
    document.body.setAttribute("data-selected", s + ":" + node(s, i)[0]);
    document.body.setAttribute("data-related", rel.L.map(function (j) { return "L:" + node("L", j)[0]; })
      .concat(rel.R.map(function (j) { return "R:" + node("R", j)[0]; })).join("\n"));
    details(s, i, rel);
    if (history.replaceState) {
      try { history.replaceState(null, "", "#" + s + ":" + encodeURIComponent(node(s, i)[0])); } catch (e) { /* file:// */ }
    }
  }
  function details(s, i, rel) {
    var n = node(s, i), g = group(s, i), o = other(s), h = [];
    h.push('<div class="head"><span class="badge' + (s === "R" && n[2] === "fused" ? " fused" : "") + '">' +
      LABEL[s] + "</span><b>" + esc(n[1]) + "</b> " + esc(n[0]) + "</div>");
    if (n[3]) h.push('<div class="doc">' + esc(n[3]) + "</div>");
    if (g) {
      h.push('<div><span class="k">pattern</span> ' + esc(g.pattern) + (g.kernel ? ' · <span class="k">kernel</span> ' +
        esc(g.kernel) : "") + (g.tactic ? ' · <span class="k">tactic</span> ' + esc(g.tactic) : "") + "</div>");
      h.push("<div>" + (g.kind === "fused" ? "Fused node" : "Kept node (weights changed)") +
        (g.fused.length > 1 ? "s" : "") + " in the fused graph:</div><ul>" +
        g.fused.map(function (j) { return "<li>" + link("R", j) + "</li>"; }).join("") + "</ul>");
      h.push("<div>Replaces " + g.sources.length + " original node" + (g.sources.length === 1 ? "" : "s") +
        ":</div><ul>" + g.sources.map(function (j) {
          var f = g.folded.indexOf(j) >= 0;
          return "<li>" + link("L", j, f ? ' data-folded="1"' : "") + (f ? " <i>(folded into the weights)</i>" : "") + "</li>";
        }).join("") + (g.missing || []).map(function (m) { return "<li><s>" + esc(m) + "</s> (not in the original)</li>"; }).join("") +
        "</ul>");
    } else if (rel[o].length) {
      h.push("<div>Unchanged; in the " + LABEL[o] + " graph: " + rel[o].map(function (j) { return link(o, j); }).join(", ") + "</div>");
    } else if (s === "L") {
      h.push("<div>" + (n[2] === "const" ? "Computed from constants only: folded into an initializer (not in the fused graph)."
        : "Not in the fused graph.") + "</div>");
    } else {
      h.push("<div>New node: no counterpart in the original.</div>");
    }
    if (!n[5]) h.push('<div class="k">(not drawn)</div>');
    h.push('<div class="k">inputs</div><div>' + n[6].map(function (t) { return "<code>" + esc(t) + "</code>"; }).join(" ") + "</div>");
    h.push('<div class="k">outputs</div><div>' + n[7].map(function (t) { return "<code>" + esc(t) + "</code>"; }).join(" ") + "</div>");
    document.getElementById("details-body").innerHTML = h.join("\n");
  }
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a.nl") : null;
    if (a) {
      ev.preventDefault();
      select(a.dataset.s, parseInt(a.dataset.i, 10), { from: "link" });
      return;
    }
    var tr = ev.target.closest ? ev.target.closest("#fusion-table tr[data-g]") : null;
    if (tr) {
      var g = D.groups[parseInt(tr.dataset.g, 10)];
      select("R", g.fused[0], { from: "table" });
    }
  });

  // ---- stepping and search ----
  function step(d) {
    if (!fusedOrder.length) return;
    var k = -1;
    if (current) {
      var gi = node(current.side, current.index)[4];
      if (gi >= 0) k = fusedOrder.indexOf(D.groups[gi].fused[0]);
    }
    k = k < 0 ? (d > 0 ? 0 : fusedOrder.length - 1) : (k + d + fusedOrder.length) % fusedOrder.length;
    select("R", fusedOrder[k], { from: "step" });
  }
  document.getElementById("next-fusion").addEventListener("click", function () { step(1); });
  document.getElementById("prev-fusion").addEventListener("click", function () { step(-1); });
  var search = document.getElementById("search"), status = document.getElementById("search-status");
  var hits = [], hitAt = -1, lastQ = null;
  search.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") return;
    var q = search.value.trim().toLowerCase();
    if (!q) return;
    if (q !== lastQ) {
      hits = [];
      ["R", "L"].forEach(function (s) {
        SIDES[s].nodes.forEach(function (n, i) {
          if (n[0].toLowerCase().indexOf(q) >= 0 || n[1].toLowerCase().indexOf(q) >= 0) hits.push([s, i]);
        });
      });
      hitAt = -1;
      lastQ = q;
    }
    if (!hits.length) { status.textContent = "no match"; return; }
    hitAt = (hitAt + (ev.shiftKey ? -1 : 1) + hits.length) % hits.length;
    status.textContent = (hitAt + 1) + " / " + hits.length;
    select(hits[hitAt][0], hits[hitAt][1], { from: "search" });
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.target === search || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "n") step(1);
    else if (ev.key === "p") step(-1);
    else if (ev.key === "/") { ev.preventDefault(); search.focus(); }
  });

  // ---- start: fit widths, then whatever the address names (#R:name / #L:name) ----
  // start readable, the same scale on both sides (text at its laid-out size) rather than the whole graph:
  // a selection scrolls into view; "fit width" / "fit all" show more
  ["L", "R"].forEach(function (s) { setZoom(s, 1.1); });
  function fromHash() {
    var h = decodeURIComponent(location.hash.slice(1));
    var m = /^([LR]):(.*)$/.exec(h);
    if (m && byName[m[1]][m[2]] !== undefined) select(m[1], byName[m[1]][m[2]], { from: "hash" });
  }
  fromHash();
  // for scripts and tests: select by name, read the current selection
  window.fuserDiff = {
    select: function (side, name) { var i = byName[side][name]; if (i === undefined) return false; select(side, i, {}); return true; },
    reveal: function (side, name) { reveal(side, [byName[side][name]]); },
    selection: function () { return current; },
    fusedNodes: function () { return fusedOrder.map(function (i) { return node("R", i)[0]; }); },
    zoom: zoom
  };
  document.body.setAttribute("data-ready", "1");
})();
