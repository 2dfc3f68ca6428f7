"""ttft: test-time fine-tuning for ARC at cluster scale."""

__version__ = "0.1.0"
