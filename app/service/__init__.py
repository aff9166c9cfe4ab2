"""Use cases of the gateway: search, route, embed, and the admin changes."""
