"""Domain operations: validation, authorisation, the change and its audit record, in one transaction.

The management API, the web UI and the node API call these; none of them touches the ORM for writes.
"""

__all__ = [
    "context",
    "cvlans",
    "dns",
    "health",
    "infra",
    "nodes",
    "policy",
    "reauth",
    "registration",
    "subnets",
    "tenants",
    "users",
    "views",
    "vrouters",
]
