"""cvlan.common."""

__all__ = ["adminconf", "backoff", "clock", "durations", "files", "host", "log", "pki", "settings"]
