"""DOT's endpoints under /o/ (its documented mount), Django's sign-in page at its default LOGIN_URL, and the two
discovery documents at the root, where the issuer (OIDC_ISS_ENDPOINT, the origin) puts them."""

from django.contrib.auth import views as auth_views
from django.urls import include, path
from oauth2_provider import views as oauth2_views

urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path(".well-known/openid-configuration", oauth2_views.ConnectDiscoveryInfoView.as_view()),
    path(".well-known/oauth-authorization-server", oauth2_views.OAuthServerMetadataView.as_view()),
]
