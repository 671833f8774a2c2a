// Auto-refresh without reloading: every few seconds the page's live part (#live) is fetched
// again (same URL, header X-Eventic-Partial: the server renders only that part) and swapped in.
// Skipped while the tab is hidden or while you are typing in a field inside the live part.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!live || !live.dataset.refresh) { return; }
  var every = parseInt(live.dataset.refresh, 10) || 2000;
  var busy = false;
  function show(text, cls) { if (state) { state.textContent = text; state.className = "live-state " + cls; } }
  function tick() {
    if (busy || document.hidden) { return; }
    var a = document.activeElement;
    if (a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) { return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-Eventic-Partial": "1" }, cache: "no-store",
                                   credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.dataset.refreshes = String((parseInt(live.dataset.refreshes || "0", 10)) + 1);
        show("live", "ok");
      })
      .catch(function () { show("not updating", "off"); })
      .then(function () { busy = false; });
  }
  show("live", "ok");
  setInterval(tick, every);
})();
