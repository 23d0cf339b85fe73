"""The infrastructure API: what relays (/v1/relay/...) and vrouters (/v1/vrouter/...) call, with
a bootstrap token first and then the certificate the controller issued them."""

__all__ = ["common", "relays", "vrouters"]
