"""Hardware probe: what this box has and which llama.cpp backend can drive it.

``aiboxctl.hardware.probe.probe_box`` is the entry point; the data it returns is in
``aiboxctl.hardware.model``. Light modules only at import time (no pynvml, numpy, llama_cpp).
"""
