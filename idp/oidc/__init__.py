"""The OpenID Connect provider: Authlib binding (grants, endpoints), signing keys, claims and the policy."""
