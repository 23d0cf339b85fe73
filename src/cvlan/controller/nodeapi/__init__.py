"""The node API (/v1/...): discover, register, poll with long-poll, renew, report."""

from cvlan.controller.nodeapi.handlers import NODEAPI_KEY, NodeApi, install

__all__ = ["NODEAPI_KEY", "NodeApi", "install"]
