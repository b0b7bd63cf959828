"""recaption: better captions for text-to-image training (Betker et al., 2023, "DALL-E 3"), as a toolkit."""

__version__ = "0.1.0"
