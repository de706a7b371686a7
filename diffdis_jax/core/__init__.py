"""What every layer of the package shares: the one-line config error and its phrasing helpers,
atomic file writes, whether a model works on pixels or on VAE latents, and the platform a
program is traced for (the backend, or an export's target)."""
