"""The web page at GET /: drop (or pick) an image, see the top classes and the Grad-CAM overlay.

One self-contained document: inline CSS and JS, nothing fetched from elsewhere (the page's
Content-Security-Policy forbids it). Text from the server goes in through textContent, never
innerHTML, so a class name cannot inject markup. When the server wants an API key, the page
asks for it and keeps it for the tab only (sessionStorage)."""

from __future__ import annotations

import html

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>leanvision · __NAME__</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2433; background: #f6f7fb; }
  body { max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; overflow-wrap: anywhere; }
  .sub { color: #5b6478; margin-top: 0; }
  #drop { display: block; border: 2px dashed #9aa3b5; border-radius: 12px; padding: 2rem;
          text-align: center; background: #fff; cursor: pointer; }
  #drop.over { border-color: #3867d6; background: #eef3ff; }
  #file { display: block; margin: .8rem auto 0; }
  #status { min-height: 1.4em; margin: .8rem 0; }
  #status.error { color: #b3261e; }
  .panels { display: flex; flex-wrap: wrap; gap: 1rem; }
  .panels figure { margin: 0; flex: 1 1 14rem; background: #fff; border-radius: 12px;
                   padding: .8rem; }
  .panels img { width: 100%; image-rendering: pixelated; border-radius: 6px; }
  figcaption { color: #5b6478; font-size: .9rem; margin-top: .3rem; overflow-wrap: anywhere; }
  #results { list-style: none; padding: 0; margin: 0; flex: 1 1 14rem; }
  #results li { background: #fff; border-radius: 8px; padding: .5rem .7rem; margin-bottom: .4rem; }
  .row { display: flex; justify-content: space-between; gap: .5rem; }
  .cls { font-weight: 600; overflow-wrap: anywhere; }
  .bar { height: 6px; background: #dfe4ee; border-radius: 3px; margin-top: .3rem; }
  .bar > span { display: block; height: 100%; background: #3867d6; border-radius: 3px; }
  #keybox { display: none; margin: .8rem 0; }
  #keybox.shown { display: block; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<h1>leanvision · __NAME__</h1>
<p class="sub">Drop an image to see what the model sees in it.</p>
<form id="keybox" autocomplete="off">
  <label>API key <input id="key" type="password" size="32"></label>
  <button type="submit">Use key</button>
</form>
<form id="textbox" autocomplete="off" hidden>
  <label>Text with the image (optional) <input id="text" type="text" size="48"
    placeholder="a title, caption or tags"></label>
  <button type="submit">Classify again</button>
</form>
<label id="drop" for="file">Drop an image here, or choose one
  <input id="file" type="file" accept="image/*">
</label>
<p id="status" role="status" aria-live="polite"></p>
<div class="panels">
  <figure id="preview-box" hidden><img id="preview" alt="the uploaded image">
    <figcaption id="preview-name"></figcaption></figure>
  <ol id="results" aria-label="top classes"></ol>
  <figure id="explain-box" hidden><img id="explanation" alt="Grad-CAM explanation">
    <figcaption id="explain-caption">Grad-CAM: where the model looked</figcaption></figure>
</div>
<script>
"use strict";
const EXPLAIN = __EXPLAIN__;
const WITH_TEXT = __TEXT__;  // an image + text model: its predictions read the text too
const $ = (id) => document.getElementById(id);
let current = null;
let urls = [];

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function post(path, file) {
  const body = new FormData();
  body.append("file", file, file.name || "image");
  const text = WITH_TEXT && path === "/v1/predict" ? $("text").value.trim() : "";
  if (text) body.append("text", text);
  const headers = {};
  const key = sessionStorage.getItem("leanvision-key");
  if (key) headers["X-API-Key"] = key;
  return fetch(path, { method: "POST", body, headers });
}

async function detail(response) {
  try { return (await response.json()).detail || response.statusText; }
  catch (e) { return response.statusText || "request failed"; }
}

function showResults(top) {
  const list = $("results");
  list.replaceChildren();
  for (const entry of top) {
    const li = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "cls";
    name.textContent = entry["class"];
    const prob = document.createElement("span");
    prob.textContent = (100 * entry.prob).toFixed(1) + "%";
    row.append(name, prob);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * entry.prob).toFixed(1) + "%";
    bar.append(fill);
    li.append(row, bar);
    list.append(li);
  }
}

async function classify(file) {
  current = file;
  urls.forEach(URL.revokeObjectURL);
  urls = [URL.createObjectURL(file)];
  $("preview").src = urls[0];
  $("preview-name").textContent = file.name || "";
  $("preview-box").hidden = false;
  $("results").replaceChildren();
  $("explain-box").hidden = true;
  setStatus("Classifying…", false);
  let response;
  try { response = await post("/v1/predict", file); }
  catch (e) { return setStatus("The server cannot be reached: " + e, true); }
  if (response.status === 401) {
    $("keybox").classList.add("shown");
    return setStatus("This server needs an API key: enter it above.", true);
  }
  if (!response.ok) return setStatus(await detail(response), true);
  const answer = (await response.json()).results[0];
  if (answer.error) return setStatus(answer.image + ": " + answer.error, true);
  showResults(answer.top);
  setStatus("Top class: " + answer.top[0]["class"], false);
  if (EXPLAIN) explain(file);
}

async function explain(file) {
  let response;
  try { response = await post("/v1/explain", file); }
  catch (e) { return; }
  if (file !== current) return;
  if (!response.ok) {
    $("explain-caption").textContent = "No explanation: " + await detail(response);
    $("explain-box").hidden = false;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  urls.push(url);
  $("explanation").src = url;
  const cls = decodeURIComponent(response.headers.get("X-Leanvision-Class") || "");
  $("explain-caption").textContent = "Grad-CAM for " + cls + ": where the model looked";
  $("explain-box").hidden = false;
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) classify(e.target.files[0]);
});
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer.files[0];
  if (file) classify(file);
});
$("textbox").hidden = !WITH_TEXT;
$("textbox").addEventListener("submit", (e) => {
  e.preventDefault();
  if (current) classify(current);
});
$("keybox").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("leanvision-key", $("key").value.trim());
  $("keybox").classList.remove("shown");
  if (current) classify(current);
});
</script>
</body>
</html>
"""


def page_html(model_name: str, explain: bool = True, with_text: bool = False) -> str:
    return (_PAGE.replace("__NAME__", html.escape(model_name))
            .replace("__EXPLAIN__", "true" if explain else "false")
            .replace("__TEXT__", "true" if with_text else "false"))
