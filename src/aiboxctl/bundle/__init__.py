"""Air-gapped bundles: ``aiboxctl pack`` writes one archive, ``aiboxctl install --bundle`` reads it.

manifest.py  the manifest and the target platform
archive.py   streaming tar (optionally zstd) writer and the verifying, safe reader
wheels.py    the wheel set for a target Python/platform (pip download, the engine wheel)
pack.py      the pack pipeline and install.sh
unpack.py    check, then unpack onto this box offline
"""
