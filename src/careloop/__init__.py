"""careloop: from a hospital's EHR data to trustworthy clinical AI at the bedside."""

__version__ = "0.1.0"
