"""aiboxctl: turn a bare AI box into a private LLM appliance."""

__version__ = "0.1.0"
