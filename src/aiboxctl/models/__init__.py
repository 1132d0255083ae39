"""GGUF header reader (file, HTTP range) and the model catalog."""
