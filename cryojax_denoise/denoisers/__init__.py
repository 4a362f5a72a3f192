"""Classical and learned denoisers (registry to follow)."""
