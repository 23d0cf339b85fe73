"""OpenID Connect sign-in: the relying party (client) and what a sign-in does to users and roles."""

__all__ = ["client", "mappings", "signin"]
