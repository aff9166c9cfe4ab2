"""HTTP layer: validate, authenticate, map errors to status codes; no model code here."""
