"""Hostile clients against real MGS, MDT and OST servers.

cluster.py runs the servers and the well-behaved client whose data must survive,
frames.py is what a case sends, cases.py draws cases with hypothesis (test extras
only), campaign.py is the long campaign of scripts/fuzz (`python -m mlustre.fuzz`).
Importing this package or cluster.py/frames.py needs no hypothesis.
"""
