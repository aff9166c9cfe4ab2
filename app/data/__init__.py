"""Dataset loading (BEIR layout) shared by training, evaluation and the service."""
