"""GGUF header reader (file, HTTP range), model facts from a header or the catalog, and the catalog."""
