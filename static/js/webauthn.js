// WebAuthn ceremonies for the hosted pages. Options come from a <script type="application/json"> block written
// by the server; the result goes back in a hidden form field. No inline script (CSP script-src 'self').
"use strict";

(function () {
  function toBytes(b64url) {
    const b64 = b64url.replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(b64 + "===".slice((b64.length + 3) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  function toB64url(buffer) {
    const bytes = new Uint8Array(buffer);
    let raw = "";
    bytes.forEach((b) => { raw += String.fromCharCode(b); });
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function requestOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    const options = Object.assign({}, json, { challenge: toBytes(json.challenge) });
    options.allowCredentials = (json.allowCredentials || []).map((c) => Object.assign({}, c, { id: toBytes(c.id) }));
    return options;
  }

  function creationOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    const options = Object.assign({}, json, { challenge: toBytes(json.challenge) });
    options.user = Object.assign({}, json.user, { id: toBytes(json.user.id) });
    options.excludeCredentials = (json.excludeCredentials || []).map(
      (c) => Object.assign({}, c, { id: toBytes(c.id) }));
    return options;
  }

  function credentialJSON(credential) {
    if (typeof credential.toJSON === "function") {
      return JSON.stringify(credential.toJSON());
    }
    const response = {};
    ["clientDataJSON", "attestationObject", "authenticatorData", "signature", "userHandle"].forEach((name) => {
      if (credential.response[name]) { response[name] = toB64url(credential.response[name]); }
    });
    if (credential.response.getTransports) { response.transports = credential.response.getTransports(); }
    return JSON.stringify({
      id: credential.id, rawId: toB64url(credential.rawId), type: credential.type, response: response,
      clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment,
    });
  }

  function optionsFor(element) {
    return JSON.parse(document.getElementById(element.dataset.options).textContent);
  }

  function submitWith(form, credential) {
    form.querySelector("input[name=credential]").value = credentialJSON(credential);
    form.submit();
  }

  // The messages are the error box's data attributes (templates/_webauthn_error.html), in the page's language.
  function showError(form, key) {
    const box = form.querySelector(".webauthn-error");
    if (box) { box.textContent = box.dataset[key] || ""; box.hidden = false; }
  }

  document.querySelectorAll("form[data-webauthn]").forEach((form) => {
    const mode = form.dataset.webauthn;
    if (!window.PublicKeyCredential) {
      showError(form, "unsupported");
      return;
    }
    if (mode === "conditional") {
      // Passkey autofill on the sign-in page: the browser offers passkeys in the email field's suggestions.
      // Only one request may be pending: the button aborts the autofill one before asking for a passkey.
      const autofill = window.AbortController ? new AbortController() : null;
      if (PublicKeyCredential.isConditionalMediationAvailable && autofill) {
        PublicKeyCredential.isConditionalMediationAvailable().then((available) => {
          if (!available || autofill.signal.aborted) { return; }
          navigator.credentials.get({ mediation: "conditional", publicKey: requestOptions(optionsFor(form)),
            signal: autofill.signal })
            .then((credential) => { if (credential) { submitWith(form, credential); } })
            .catch(() => { /* the user chose the password, or the button below */ });
        });
      }
      const button = form.querySelector("button");
      if (button) {
        button.addEventListener("click", (event) => {
          event.preventDefault();
          if (autofill) { autofill.abort(); }
          navigator.credentials.get({ publicKey: requestOptions(optionsFor(form)) })
            .then((credential) => submitWith(form, credential))
            .catch(() => showError(form, "noPasskey"));
        });
      }
      return;
    }
    form.addEventListener("submit", (event) => {
      if (form.querySelector("input[name=credential]").value) { return; }
      event.preventDefault();
      const ceremony = mode === "create"
        ? navigator.credentials.create({ publicKey: creationOptions(optionsFor(form)) })
        : navigator.credentials.get({ publicKey: requestOptions(optionsFor(form)) });
      ceremony.then((credential) => submitWith(form, credential))
        .catch(() => showError(form, "notUsed"));
    });
  });
}());
