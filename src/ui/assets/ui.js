// registry-edge web UI: small progressive touches. Every page works without this file.
"use strict";
(function () {
  // Copy buttons, shown only where the clipboard can be written.
  if (navigator.clipboard) {
    document.querySelectorAll("button.copy").forEach(function (b) {
      b.hidden = false;
      var label = b.textContent;
      b.addEventListener("click", function () {
        navigator.clipboard.writeText(b.dataset.copy).then(function () {
          b.textContent = b.dataset.copied;
          setTimeout(function () { b.textContent = label; }, 1500);
        });
      });
    });
  }
  // Filter as you type: the list is fetched as the form would fetch it, and swapped in.
  var input = document.getElementById("filter");
  var list = document.getElementById("repo-list");
  if (input && list && window.fetch && window.DOMParser) {
    var timer = null, seq = 0;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var url = "/?q=" + encodeURIComponent(input.value.trim());
        var mine = ++seq;
        fetch(url, { credentials: "same-origin" }).then(function (r) {
          return r.ok ? r.text() : null;
        }).then(function (html) {
          if (!html || mine !== seq) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("repo-list");
          if (fresh) {
            list.replaceChildren.apply(list, Array.from(fresh.childNodes));
            history.replaceState(null, "", url);
          }
        });
      }, 200);
    });
  }
})();
