"""What every layer of the package shares: the one-line config error and its phrasing helpers,
atomic file writes, and whether a model works on pixels or on VAE latents."""
