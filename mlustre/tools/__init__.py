"""Administrative and user tools built on the client library (lfs)."""
