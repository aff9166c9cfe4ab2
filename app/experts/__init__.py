"""Expert artifacts on disk, their validation, and the registry that serves them."""
