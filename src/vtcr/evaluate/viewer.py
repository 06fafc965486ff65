"""index.html: one self-contained page (inline CSS, JS and data) to browse every run of an eval folder.

A filterable list of runs (benchmark, mode, problem id, sample, correct, rounds, tokens, latency);
clicking one shows, per round, its text, its page images and its figures (generated / vision /
prefill tokens, images given, pages rendered, generate and render seconds). `index.html#run=N`
opens run N directly.

Page images are NOT inlined: they are the PNG files the runner saved under DIR/images/ and the page
links them by relative path, so the HTML stays small and works from file:// as long as it sits in
its eval folder. All text goes into the DOM through `textContent` (never parsed as HTML), and the
data is embedded as JSON with every `<` escaped, so model output cannot break out of the page.

Protected benchmarks (GPQA-Diamond): neither the question nor the model's text is included; their
runs show ids, letters and figures only.

For automated checks the page sets `data-ready="1"` on <body> once it has rendered, and records any
script error (window.onerror, unhandled rejections) and any image that fails to load in
`#errors` (`data-errors` on <body> counts them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vtcr._io import write_text_atomic
from vtcr.evaluate.figures import GROUP_COLUMNS, format_figure, format_group
from vtcr.evaluate.results import is_protected

VIEWER_FILE = "index.html"
WITHHELD = "[withheld: text of a protected benchmark (GPQA) is never shown]"


def _round_view(rnd: dict[str, Any], protected: bool) -> dict[str, Any]:
    # Figures arrive as the strings report.md would print (vtcr.evaluate.figures): the page never rounds.
    return {
        "text": None if protected else rnd.get("text", ""),
        "gen": format_figure(rnd.get("generated_tokens"), "int"), "vis": format_figure(rnd.get("vision_tokens"), "int"),
        "pre": format_figure(rnd.get("prefill_tokens"), "int"), "img": format_figure(rnd.get("images"), "int"),
        "pages": format_figure(rnd.get("pages"), "int"), "gs": format_figure(rnd.get("generate_s"), "s"),
        "rs": format_figure(rnd.get("render_s"), "s"),
        "fin": rnd.get("finish_reason"), "files": [] if protected else list(rnd.get("page_files") or []),
    }  # fmt: skip


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    """What the viewer gets of one results row (nothing of a protected benchmark's text)."""
    protected = is_protected(str(row["benchmark"]))
    rounds = row.get("rounds") or []
    return {
        "bench": row["benchmark"], "id": str(row["id"]), "sample": row["sample"], "mode": row["mode"],
        "correct": bool(row.get("correct")), "pred": row.get("pred"), "gold": row.get("gold"),
        "reason": row.get("grade_reason"), "finished": bool(row.get("finished")), "stop": row.get("stop_reason"),
        "error": (row.get("error") and "error (message withheld)") if protected else row.get("error"),
        "latency": format_figure(row.get("latency_s"), "s"), "protected": protected,
        "question": None if protected else row.get("question"),
        "tokens": format_figure(sum(int(r.get("generated_tokens") or 0) for r in rounds), "int"),
        "rounds": [_round_view(r, protected) for r in rounds],
    }  # fmt: skip


def _json_for_script(data: Any) -> str:
    # Inside <script>, only "</script" and "<!--" are dangerous; escaping every "<" covers both.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_viewer(rows: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    """The page as a string."""
    data = {
        "runs": [run_view(r) for r in rows],
        "columns": [["benchmark", "benchmark"]] + [[header, key] for header, key, _ in GROUP_COLUMNS],
        "groups": [{"benchmark": g["benchmark"], **format_group(g)} for g in (summary or {}).get("groups", [])],
        "withheld": WITHHELD,
    }
    return _TEMPLATE.replace("/*DATA*/null", _json_for_script(data))


def write_viewer(out_dir: str | os.PathLike, rows: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> Path:
    path = Path(out_dir) / VIEWER_FILE
    write_text_atomic(path, render_viewer(rows, summary))
    return path


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vtcr evaluation runs</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 16px;background:#263238;color:#fff}
header h1{font-size:18px;margin:0}
main{display:flex;gap:12px;padding:12px;align-items:flex-start}
#side{flex:0 0 560px;max-height:calc(100vh - 80px);overflow:auto;background:#fff;border:1px solid #ddd}
#detail{flex:1;min-width:0}
table{border-collapse:collapse;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #eee;text-align:left;font-size:12px;white-space:nowrap}
#runs tbody tr{cursor:pointer}
#runs tbody tr:hover{background:#eef}
#runs tbody tr.sel{background:#dde}
.ok{color:#1b7f3b;font-weight:bold}.bad{color:#b3261e;font-weight:bold}
.filters{padding:6px;display:flex;gap:6px;flex-wrap:wrap;border-bottom:1px solid #ddd}
.round{background:#fff;border:1px solid #ddd;margin:0 0 12px;padding:8px}
.round h3{margin:0 0 4px;font-size:14px}
.figs{font-size:12px;color:#555;margin-bottom:6px}
pre{white-space:pre-wrap;word-break:break-word;background:#f5f5f5;padding:6px;max-height:420px;overflow:auto;font-size:12px}
.pages img{max-width:100%;border:1px solid #ccc;margin:4px 0;display:block}
#summary{margin:0 12px;background:#fff;border:1px solid #ddd}
#errors{color:#b3261e}
.meta{background:#fff;border:1px solid #ddd;padding:8px;margin-bottom:12px}
</style>
</head>
<body>
<header><h1>vtcr evaluation runs</h1><div id="status">loading…</div></header>
<ul id="errors"></ul>
<details id="summary" open><summary>Summary per benchmark and mode</summary><table id="groups"><thead></thead><tbody></tbody></table></details>
<main>
<div id="side">
<div class="filters">
<select id="f-bench"><option value="">all benchmarks</option></select>
<select id="f-mode"><option value="">all modes</option></select>
<select id="f-correct"><option value="">right and wrong</option><option value="1">right</option><option value="0">wrong</option></select>
<input id="f-id" placeholder="problem id contains">
</div>
<table id="runs"><thead><tr><th>#</th><th>benchmark</th><th>mode</th><th>id</th><th>sample</th><th>ok</th><th>pred</th><th>gold</th><th>rounds</th><th>tokens</th><th>latency s</th></tr></thead><tbody></tbody></table>
<button id="more" hidden>show more</button>
</div>
<div id="detail"><p>Select a run.</p></div>
</main>
<script id="data" type="application/json">/*DATA*/null</script>
<script>
(function () {
  "use strict";
  var nErrors = 0;
  function report(msg) {
    nErrors += 1;
    var li = document.createElement("li");
    li.textContent = String(msg);
    document.getElementById("errors").appendChild(li);
    document.body.setAttribute("data-errors", String(nErrors));
  }
  window.onerror = function (msg, src, line) { report("script error: " + msg + " (line " + line + ")"); };
  window.addEventListener("unhandledrejection", function (e) { report("unhandled rejection: " + e.reason); });
  document.body.setAttribute("data-errors", "0");

  var DATA = JSON.parse(document.getElementById("data").textContent);
  var runs = DATA.runs, PAGE = 500, shown = PAGE;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  // Figures come formatted (vtcr.evaluate.figures, the rule report.md uses): shown as given, never rounded here.
  function num(v) { return v === null || v === undefined ? "–" : String(v); }
  function options(id, values) {
    var sel = document.getElementById(id);
    values.forEach(function (v) { var o = el("option", v); o.value = v; sel.appendChild(o); });
  }
  function uniq(key) {
    var seen = {}, out = [];
    runs.forEach(function (r) { if (!seen[r[key]]) { seen[r[key]] = 1; out.push(r[key]); } });
    return out;
  }

  function renderGroups() {
    var cols = DATA.columns;
    var head = el("tr");
    cols.forEach(function (c) { head.appendChild(el("th", c[0])); });
    document.querySelector("#groups thead").appendChild(head);
    var body = document.querySelector("#groups tbody");
    DATA.groups.forEach(function (g) {
      var tr = el("tr");
      cols.forEach(function (c) {
        tr.appendChild(el("td", num(g[c[1]])));
      });
      body.appendChild(tr);
    });
  }

  function filtered() {
    var b = document.getElementById("f-bench").value, m = document.getElementById("f-mode").value;
    var c = document.getElementById("f-correct").value, q = document.getElementById("f-id").value;
    var out = [];
    runs.forEach(function (r, i) {
      if (b && r.bench !== b) return;
      if (m && r.mode !== m) return;
      if (c && String(r.correct ? 1 : 0) !== c) return;
      if (q && r.id.indexOf(q) < 0) return;
      out.push(i);
    });
    return out;
  }

  function renderList() {
    var tbody = document.querySelector("#runs tbody");
    tbody.textContent = "";
    var idx = filtered();
    idx.slice(0, shown).forEach(function (i) {
      var r = runs[i], tr = el("tr");
      tr.setAttribute("data-run", String(i));
      [i, r.bench, r.mode, r.id, r.sample].forEach(function (v) { tr.appendChild(el("td", v)); });
      tr.appendChild(el("td", r.correct ? "✓" : "✗", r.correct ? "ok" : "bad"));
      [r.pred, r.gold, r.rounds.length, r.tokens, num(r.latency)].forEach(function (v) { tr.appendChild(el("td", v)); });
      tr.addEventListener("click", function () { location.hash = "run=" + i; });
      tbody.appendChild(tr);
    });
    var more = document.getElementById("more");
    more.hidden = idx.length <= shown;
    document.getElementById("status").textContent = idx.length + " of " + runs.length + " runs";
    markSelected();
  }

  function markSelected() {
    var sel = selectedRun();
    Array.prototype.forEach.call(document.querySelectorAll("#runs tbody tr"), function (tr) {
      tr.className = tr.getAttribute("data-run") === String(sel) ? "sel" : "";
    });
  }

  function selectedRun() {
    var m = /run=(\d+)/.exec(location.hash);
    return m && +m[1] < runs.length ? +m[1] : null;
  }

  function renderDetail() {
    var box = document.getElementById("detail"), i = selectedRun();
    box.textContent = "";
    if (i === null) { box.appendChild(el("p", "Select a run.")); return; }
    var r = runs[i], meta = el("div", null, "meta");
    meta.id = "run-meta";
    meta.appendChild(el("h2", r.bench + " · " + r.id + " · sample " + r.sample + " · " + r.mode));
    meta.appendChild(el("div", (r.correct ? "correct" : "wrong") + " — pred: " + num(r.pred) + ", gold: " + num(r.gold) +
      " (" + r.reason + "); " + (r.finished ? "finished" : "not finished") + " (" + r.stop + "); latency " +
      num(r.latency) + " s", r.correct ? "ok" : "bad"));
    if (r.error) meta.appendChild(el("div", "error: " + r.error, "bad"));
    if (r.question !== null && r.question !== undefined) {
      meta.appendChild(el("h3", "Question"));
      meta.appendChild(el("pre", r.question, "question"));
    }
    box.appendChild(meta);
    r.rounds.forEach(function (rd, k) {
      var card = el("section", null, "round");
      card.setAttribute("data-round", String(k + 1));
      card.appendChild(el("h3", "Round " + (k + 1)));
      card.appendChild(el("div", "generated " + num(rd.gen) + " tokens · prompt vision tokens " + num(rd.vis) +
        " · prefill " + num(rd.pre) + " · images given " + num(rd.img) + " · pages rendered " + num(rd.pages) +
        " · generate " + num(rd.gs) + " s · render " + num(rd.rs) + " s · " + num(rd.fin), "figs"));
      card.appendChild(el("pre", rd.text === null ? DATA.withheld : rd.text, "text"));
      if (rd.files.length) {
        var pages = el("div", null, "pages");
        rd.files.forEach(function (f) {
          var img = new Image();
          img.alt = f;
          img.onload = function () { img.setAttribute("data-loaded", "1"); };
          img.onerror = function () { img.setAttribute("data-broken", "1"); report("image failed to load: " + f); };
          img.src = f;
          pages.appendChild(img);
        });
        card.appendChild(pages);
      }
      box.appendChild(card);
    });
    markSelected();
  }

  options("f-bench", uniq("bench"));
  options("f-mode", uniq("mode"));
  ["f-bench", "f-mode", "f-correct"].forEach(function (id) {
    document.getElementById(id).addEventListener("change", function () { shown = PAGE; renderList(); });
  });
  document.getElementById("f-id").addEventListener("input", function () { shown = PAGE; renderList(); });
  document.getElementById("more").addEventListener("click", function () { shown += PAGE; renderList(); });
  window.addEventListener("hashchange", renderDetail);
  renderGroups();
  renderList();
  renderDetail();
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"""
