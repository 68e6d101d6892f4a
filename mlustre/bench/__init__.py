"""Benchmarks (docs/benchmarks.md), run by scripts/bench (`python -m mlustre.bench`).

io.py (with common, targets, phases, pingpong, report): I/O and metadata on mlustre
against tmpfs and a pyfuse3 passthrough (passthrough.py); barrier.py: what the SIR
barrier costs (dirtier.py leaves data dirty for it); recovery.py: the recovery time
after an MDT crash.
"""
