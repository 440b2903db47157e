"""YuE: lyrics-to-song with two LMs over X-Codec tokens."""

__version__ = "0.1.0"
