"""Changes to experts and documents, applied locally or replicated through Redis."""
