"""Self-service pages: sign up, email verification links, password reset, sign out, profile and sessions."""
