// OAuth 2.0 Form Post Response Mode: send the authorization response to the client as soon as the page loads
// (a file of ours, so the page's CSP needs no inline script; the button does the same without scripts).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("form-post");
  if (form) { form.submit(); }
});
