"""Several clients writing one file at once, many rounds, checked after each
(scripts/coherence-stress, `python -m mlustre.coherence_stress`; the per-client workers
are mlustre/coherence_stress/workers.py, each its own process on its own mount)."""
