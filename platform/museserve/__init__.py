"""museserve: serving platform for the Muse multimodal reasoning models."""

__version__ = "0.1.0"
