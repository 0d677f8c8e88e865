"""influence-signals: how well training-data influence signals find glitches in a training set."""

__version__ = "0.1.0"
