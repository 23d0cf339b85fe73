"""cvlan.common."""

__all__ = ["adminconf", "backoff", "clock", "durations", "files", "log", "pki", "settings"]
