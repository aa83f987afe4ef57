"""visalign: align visual generators with visual rewards."""

__version__ = "0.1.0"
