"""rtserver: a real-time messaging server on Twisted, wire-compatible with Centrifugo."""

__version__ = "0.1.0"
