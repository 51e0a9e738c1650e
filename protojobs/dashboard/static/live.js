// Live refresh: every element with data-live="N" is fetched again every N seconds (the page
// answers a request with the X-Live header with that fragment only) and swapped in place.
(function () {
  function refresh() {
    var el = document.getElementById("live");
    if (!el || document.hidden) return;
    fetch(window.location.href, {headers: {"X-Live": "1"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var tpl = document.createElement("template");
        tpl.innerHTML = html.trim();
        var fresh = tpl.content.getElementById("live");
        var now = document.getElementById("live");
        if (fresh && now) now.replaceWith(fresh);
      })
      .catch(function () {});
  }
  var el = document.getElementById("live");
  if (el) setInterval(refresh, 1000 * (parseFloat(el.dataset.live) || 5));
})();
