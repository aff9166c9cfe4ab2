"""RouterRetriever gateway: route each query to a LoRA expert, embed, search its index."""

__version__ = "0.1.0"
