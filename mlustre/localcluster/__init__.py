"""A local cluster: starting, failing over and stopping it, and reading the mount table.

mounts.py is the one reader of /proc/self/mountinfo (octal escapes undone),
processes.py reads and signals processes by /proc (start times checked),
cluster.py drives a cluster through the `mlustre` CLI (`LocalCluster`). Used by the
CLI's registry, `lfs`, the mount tests (mountpoint-tests/mnthelpers.py), the
benchmarks (mlustre.bench), the upgrade demo, the failover soak and the coherence
stress. This file imports nothing, so that registry.py can use mounts.py.
"""
