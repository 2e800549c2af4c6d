// dcc.Upload drops a file above its max_size in the browser and tells the server nothing, so
// the page would stay silent: say so beside the upload box instead. The box sits in an element
// whose data-max-bytes attribute holds the cap (the server checks the same cap again).
(function () {
  "use strict";

  // The holder's data-status-id names the element where the server says "loaded …" or why it
  // refused a file: the refusal goes there too (through Dash, so the server's next answer
  // replaces it), or a refused file sat beside the "loaded …" of the file before it.
  function say(holder, text) {
    const status = holder.getAttribute("data-status-id");
    const props = window.dash_clientside && window.dash_clientside.set_props;
    if (!status || !props) return false;
    props(status, {
      children: {
        type: "Div",
        namespace: "dash_html_components",
        props: { className: "fg-message fg-error fg-upload-refused", role: "alert", children: text },
      },
    });
    return true;
  }

  function report(files, target) {
    const holder = target && target.closest ? target.closest("[data-max-bytes]") : null;
    if (!holder || !files || !files.length) return;
    const limit = Number(holder.getAttribute("data-max-bytes"));
    let note = holder.querySelector(".fg-upload-refused");
    const file = files[0];
    if (file.size <= limit) {
      if (note) note.remove();
      return;
    }
    const fmt = (x) => x.toLocaleString("en-US");
    const text =
      `${file.name} is ${fmt(file.size)} bytes; the limit is ${fmt(limit)} bytes (not uploaded)`;
    if (say(holder, text)) return;
    if (!note) {
      note = document.createElement("div");
      note.className = "fg-message fg-error fg-upload-refused";
      note.setAttribute("role", "alert");
      holder.appendChild(note);
    }
    note.textContent = text;
  }

  document.addEventListener("change", (e) => report(e.target.files, e.target), true);
  document.addEventListener(
    "drop",
    (e) => report(e.dataTransfer ? e.dataTransfer.files : null, e.target),
    true,
  );
})();
