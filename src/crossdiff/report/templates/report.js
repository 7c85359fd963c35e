// crossdiff report: sort and filter the feature lists. Reads only attributes and text the page
// already holds (never inserts HTML), so escaped corpus text stays text.
(function () {
  "use strict";
  function cellValue(row, i) {
    var cell = row.cells[i];
    var v = cell.getAttribute("data-v");
    if (v === null) { return cell.textContent.toLowerCase(); }
    var n = parseFloat(v);
    return isNaN(n) ? -Infinity : n;
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("data-dir") !== "asc";
        Array.prototype.forEach.call(heads, function (o) { o.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", asc ? "asc" : "desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, i), y = cellValue(b, i);
          if (x < y) { return asc ? -1 : 1; }
          if (x > y) { return asc ? 1 : -1; }
          return 0;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll(".filter"), function (box) {
    var table = document.getElementById(box.getAttribute("data-table"));
    var text = box.querySelector("input");
    var verdict = box.querySelector("select");
    var count = box.querySelector(".count");
    function apply() {
      var q = text.value.toLowerCase();
      var want = verdict.value;
      var shown = 0;
      var rows = table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (r) {
        var ok = (!q || r.textContent.toLowerCase().indexOf(q) >= 0) &&
                 (!want || r.getAttribute("data-verdict") === want);
        r.hidden = !ok;
        if (ok) { shown += 1; }
      });
      count.textContent = shown + " of " + rows.length + " shown";
    }
    text.addEventListener("input", apply);
    verdict.addEventListener("change", apply);
    apply();
  });
  document.body.setAttribute("data-ready", "1");
})();
