"""Building, caching and installing the llama-cpp-python wheel a box needs.

By concern, bottom to top: :mod:`.specs` (which build: backend, architectures, CMake flags),
:mod:`.toolchain` (is the compiler toolchain for it there), :mod:`.cache` (the wheel cache),
:mod:`.compile` (sdist → wheel), :mod:`.record` (what was installed, every attempt),
:mod:`.verify` (ask the installed engine, self-test it), :mod:`.install` (``engine install``,
and the missing-backend build ``aiboxctl install`` runs first), :mod:`.status`
(``engine status``). The accelerators always come from the caller's probe.
"""
