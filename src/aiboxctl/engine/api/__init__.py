"""The engine's OpenAI-compatible HTTP side, laid out as vLLM's ``entrypoints/openai``:

* ``protocol``     request bodies (validated) and the shapes of answers, errors and SSE chunks
* ``edge``         what every request passes at the door: API key, body limit, audit record,
                   the JSON 500 for anything unhandled
* ``serving``      one generation request from raw body to answer (shared by every family)
* ``serving_chat``, ``serving_completions``   one module per endpoint family: how its body
                   becomes prompt tokens and how its answers are shaped
* ``app``          the FastAPI app: lifespan and thin routes

The engine's state and its boot live one level up (``engine.state``); the decode loop in
``engine.scheduler``.
"""
