"""Single sign-on: connectors (OIDC, GitHub, SAML 2.0), the login flow, roles from claims.

docs/sso.md is the operator's guide. Each protocol module turns a connector's spec
into a :class:`hub.sso.provider.Provider`; ``flow.py`` runs a login through one.
Hub-only: needs the ``hub`` extra (aiohttp, joserfc, pysaml2).
"""
