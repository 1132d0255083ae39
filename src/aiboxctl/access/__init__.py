"""Governed access at the front door: who may use which model, how much, who used it when, and
a record that shows tampering. No HTTP framework in here: the gateway calls :mod:`gate`, the CLI
calls the rest; every time-dependent piece takes an injected clock (``now: () -> float``).

refusal  AccessDenied: a 401/403/429 in OpenAI's error shape (with Retry-After)
keys     the key file (salted HMAC-SHA256 hashes, 0600), add/list/revoke/rotate, the live KeyRing
         that re-reads the file when it changes
limits   per-key requests per minute, tokens per day (reserve, then settle), concurrency
ledger   the usage ledger: SQLite in WAL mode, group commit, synchronous=FULL; reports
audit    the hash-chained audit log, signed checkpoints, verify, syslog forwarding
tls      a local CA and server certificates (cryptography), checks of an organisation's pair
gate     what the gateway calls per request: admit → (relay) → finish
paths    where the access files of an installation live
"""
