"""The endpoints that skip Flask-Limiter's per-request lookup (idp.extensions.UNLIMITED_ENDPOINTS) carry no limit
that the skip would switch off. That limited endpoints are still limited is tested where each limit is
(tests/test_hosted_security.py, test_account_api.py, test_registration.py, test_device.py)."""

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_qualified_name

from idp.extensions import UNLIMITED_ENDPOINTS, limiter


def test_the_endpoints_that_skip_the_limiter_have_no_limit(app):
    with app.test_request_context():
        manager = limiter.limit_manager
        for endpoint in UNLIMITED_ENDPOINTS:
            view = app.view_functions[endpoint]  # a KeyError is a renamed endpoint the filter no longer matches
            assert not manager.decorated_limits(get_qualified_name(view)), endpoint
            blueprint = endpoint.rpartition(".")[0]
            assert not manager.blueprint_limits(app, blueprint), endpoint
        assert not manager.default_limits and not manager.application_limits



def test_the_limiters_check_runs_on_every_endpoint_but_those_without_limits(app, client, monkeypatch):
    """idp.extensions._Limiter skips Flask-Limiter's before-request check on UNLIMITED_ENDPOINTS, and only there:
    the hosted pages, the account API and the rest are still checked."""
    checked: list[str | None] = []
    monkeypatch.setattr(Limiter, "_check_request_limit",
                        lambda self, *args, **kwargs: checked.append(request.endpoint))
    client.get("/userinfo")
    client.post("/token", data={"grant_type": "client_credentials"})
    client.get("/jwks.json?fresh")
    client.get("/healthz")
    client.get("/authorize?client_id=nobody")
    client.get("/login/no-such-transaction")
    assert checked == []
    client.get("/login")
    client.post("/api/v1/register", json={})
    assert set(checked) == {"login.begin", "account_api.register"}, checked
