"""Training-free routing over pilot embeddings (RouterRetriever)."""

from app.routing.router import Router, RoutingDecision

__all__ = ["Router", "RoutingDecision"]
