// Keyboard shortcuts for the labelling pages. Plain JavaScript, no dependencies.
// The pages work without it (ordinary form posts); this only adds keys and focus.
// It carries no data: outputs are known here only by their letters.
(function () {
  "use strict";

  var page = document.body.getAttribute("data-page");

  function typing(el) {
    if (!el) return false;
    var tag = el.tagName;
    return tag === "TEXTAREA" || tag === "SELECT" ||
      (tag === "INPUT" && el.type !== "radio" && el.type !== "checkbox");
  }

  function toggleHelp() {
    var help = document.getElementById("shortcuts");
    if (help) help.classList.toggle("hidden");
  }

  // The name page: remember the name in this browser too, and offer it next time.
  if (page === "name") {
    var input = document.getElementById("name");
    try {
      if (input && !input.value && window.localStorage.getItem("labeller")) {
        input.value = window.localStorage.getItem("labeller");
      }
      input.form.addEventListener("submit", function () {
        window.localStorage.setItem("labeller", input.value.trim());
      });
    } catch (e) { /* storage disabled: the cookie still holds the name */ }
    return;
  }

  if (page === "reveal" || page === "done") {
    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
      var next = document.getElementById("next");
      if (next && (ev.key === "Enter" || ev.key === "n")) {
        ev.preventDefault();
        window.location.href = next.getAttribute("href");
      }
    });
    return;
  }

  if (page !== "item") return;

  var form = document.getElementById("label-form");
  var outputs = Array.prototype.slice.call(document.querySelectorAll("fieldset.output"));
  var reference = document.getElementById("reference");
  var flagReason = document.getElementById("flag_reason");
  var flagRow = document.getElementById("flag-row");
  var clientError = document.getElementById("client-error");
  var values = { "1": "correct", "2": "incorrect", "3": "partly" };
  var current = 0;
  var sent = false;

  function judged(fs) {
    return fs.querySelector("input[type=radio]:checked") !== null;
  }

  function focusOutput(i) {
    if (!outputs.length) return;
    current = Math.max(0, Math.min(outputs.length - 1, i));
    outputs.forEach(function (fs, j) { fs.classList.toggle("focused", j === current); });
    outputs[current].focus({ preventScroll: true });
    outputs[current].scrollIntoView({ block: "nearest" });
  }

  function showError(text) {
    clientError.textContent = text;
    clientError.hidden = !text;
  }

  function send(action) {
    if (sent) return;
    var button = document.getElementById(action);
    sent = true;
    form.requestSubmit(button);
  }

  function submit() {
    var missing = outputs.filter(function (fs) { return !judged(fs); });
    if (missing.length) {
      var letters = missing.map(function (fs) { return fs.id.replace("out-", ""); });
      showError("Give every output a verdict first (missing: " + letters.join(", ") + ").");
      focusOutput(outputs.indexOf(missing[0]));
      return;
    }
    send("submit");
  }

  function setVerdict(value) {
    var fs = outputs[current];
    if (!fs) return;
    var radio = fs.querySelector("input[type=radio][value=" + value + "]");
    radio.checked = true;
    fs.classList.add("done");
    showError("");
    // Move on to the next output still without a verdict, if any.
    for (var k = 1; k <= outputs.length; k++) {
      var j = (current + k) % outputs.length;
      if (!judged(outputs[j])) { focusOutput(j); return; }
    }
  }

  outputs.forEach(function (fs, i) {
    fs.addEventListener("click", function () { focusOutput(i); });
    fs.addEventListener("change", function () { fs.classList.add("done"); showError(""); });
    if (judged(fs)) fs.classList.add("done");
  });

  form.addEventListener("submit", function (ev) {
    var action = ev.submitter ? ev.submitter.value : "submit";
    if (action === "submit" && outputs.some(function (fs) { return !judged(fs); })) {
      ev.preventDefault();
      sent = false;
      submit();
      return;
    }
    sent = true;
  });

  flagReason.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { ev.preventDefault(); send("flag"); }
    if (ev.key === "Escape") { ev.preventDefault(); flagReason.blur(); flagRow.classList.remove("active"); }
  });

  reference.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") { ev.preventDefault(); reference.blur(); focusOutput(current); }
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); }
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    var key = ev.key;
    if (values[key]) { ev.preventDefault(); setVerdict(values[key]); }
    else if (key === "j" || key === "ArrowDown") { ev.preventDefault(); focusOutput(current + 1); }
    else if (key === "k" || key === "ArrowUp") { ev.preventDefault(); focusOutput(current - 1); }
    else if (key === "r") { ev.preventDefault(); reference.focus(); }
    else if (key === "s") { ev.preventDefault(); send("skip"); }
    else if (key === "f") { ev.preventDefault(); flagRow.classList.add("active"); flagReason.focus(); }
    else if (key === "Enter") { ev.preventDefault(); submit(); }
    else if (key === "?") { ev.preventDefault(); toggleHelp(); }
  });

  focusOutput(0);
})();
