"""The engine: an OpenAI-compatible server on llama.cpp (continuous batching), its llama.cpp
adapter, the self-test that proves a configuration in a child process, and engine builds."""
