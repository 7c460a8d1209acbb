"""Who may do what: API tokens and roles, and the two Ed25519 signing keys."""
