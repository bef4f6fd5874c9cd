"""DOT's validator with the profile and email claims (DOT sends only ``sub`` unless told), so that its userinfo
answers what idp's and oidc-provider's do. DOT gives each claim only for its scope (``oidc_claim_scope``)."""

from oauth2_provider.oauth2_validators import OAuth2Validator


class ClaimsValidator(OAuth2Validator):
    def get_additional_claims(self, request):
        user = request.user
        return {"name": user.first_name, "email": user.email, "email_verified": True}
