"""ragtune: fine-tune an embedding model on your own domain data and measure the retrieval gain honestly."""

__version__ = "0.1.0"
