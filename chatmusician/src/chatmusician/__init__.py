"""ChatMusician: an LLM that reads and writes ABC notation."""

__version__ = "0.1.0"
