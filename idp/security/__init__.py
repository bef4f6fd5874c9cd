"""Pure functions under the safe surface: hashing, codes, tokens, addresses. No Flask here; time is a parameter."""
