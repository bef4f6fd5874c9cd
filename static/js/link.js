// A mailed link (email verification, password reset, unlock) carries its one-time token in the URL fragment,
// which a browser never sends to a server, so the token is in no access log, proxy log or Referer. This reads it,
// takes it off the address bar and history, and POSTs it with the page's form. No inline script (CSP).
"use strict";

(function () {
  const form = document.getElementById("link-form");
  const field = document.getElementById("link-token");
  const fragment = window.location.hash.slice(1);
  if (!form || !field || !fragment) {
    return;  // nothing to read: the form stays for the token to be pasted
  }
  history.replaceState(null, "", window.location.pathname + window.location.search);
  let token = fragment;
  try {
    token = decodeURIComponent(fragment);
  } catch (e) {
    // not percent-encoded after all: sent as it is, and the server judges it
  }
  field.value = token;
  form.hidden = true;
  form.submit();
})();
