"""Who may do what: the auth service, roles, locks, secrets and login/join limits."""
