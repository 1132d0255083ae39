"""The front door: one process on the service port in front of several engine instances.

It routes each OpenAI request by its ``model`` to the engines that serve that model, balances
over replicas (:mod:`balance`, pure functions over a snapshot of engine states), streams
answers through as they arrive, and reports per model and per replica (``/metrics``,
``/health``). A clean room: it speaks HTTP to engines and never imports llama_cpp or
``aiboxctl.engine`` (an import-linter contract holds it to that).

config   gateway.yaml into a frozen GatewayConfig (file:line errors)
balance  replica choice: least outstanding, session/prefix affinity, capacity (pure)
pool     the live state per model and replica: in-flight counts, the bounded queue, health
metrics  Prometheus metrics per model and replica
app      the ASGI app: routes, the streaming relay, disconnect propagation
run      ``aiboxctl gateway``'s core: uvicorn around the app
"""
