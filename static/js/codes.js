// The recovery codes page: copy the codes, or save them as a text file, from the page itself (a Blob), so the
// plain codes, shown once, never need a server address that could serve them again.
(function () {
  "use strict";
  const list = document.getElementById("recovery-codes");
  const tools = document.querySelector(".code-tools");
  if (!list || !tools) { return; }
  const codes = Array.from(list.querySelectorAll("li"), (item) => item.textContent.trim());
  const download = document.getElementById("download-codes");
  const text = [download.dataset.heading, ""].concat(codes).join("\n") + "\n";
  download.href = URL.createObjectURL(new Blob([text], { type: "text/plain;charset=utf-8" }));
  const copy = document.getElementById("copy-codes");
  if (navigator.clipboard) {
    copy.addEventListener("click", () => {
      navigator.clipboard.writeText(codes.join("\n")).then(() => { copy.textContent = copy.dataset.copied; });
    });
  } else {
    copy.hidden = true;
  }
  tools.hidden = false;
}());
