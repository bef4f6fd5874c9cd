// Front-Channel Logout 1.0: once every application's logout frame has loaded (or after a few seconds, whichever
// comes first), continue to the post-logout redirect URI the application asked for.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var link = document.getElementById("continue");
  if (!link) { return; }
  var frames = document.querySelectorAll("iframe.frontchannel-logout");
  var waiting = frames.length;
  var gone = false;
  function go() { if (!gone) { gone = true; window.location.assign(link.href); } }
  Array.prototype.forEach.call(frames, function (frame) {
    frame.addEventListener("load", function () { waiting -= 1; if (waiting <= 0) { go(); } });
  });
  if (waiting === 0) { go(); }
  window.setTimeout(go, 5000);
});
