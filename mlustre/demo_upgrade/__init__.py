"""demo_upgrade - the rolling-upgrade demo behind scripts/demo-upgrade (what it does and
checks: __main__.py; the workload: workers.py; the failovers: run.py; the timeline and
plot: report.py)."""
