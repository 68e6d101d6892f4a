"""demo_upgrade -  a rolling upgrade of a running mlustre cluster, 1.8 -> 2.0, one
server at a time by controlled failover, under a mixed workload that must not see a
single failed system call; then one server back to 1.8.

Started by scripts/demo-upgrade (which bootstraps first): `python -m mlustre.demo_upgrade`.
Modules: common (constants, log), workers (the workloads, each a child process),
run (the cluster, the upgrades, the clean-up), report (analysis, timeline, SVG),
__main__ (arguments). Steps:

  1. a fresh local cluster of release 1.8 whose MDT and OSTs are failover pairs
     (`mlustre up --release 1.8 --failover-pairs`), in a new work directory;
  2. workloads on the mount, each its own process:
       writer   appends checksummed fixed-size records (sequence number, sha256 of the
                payload), fsync every N records, and times every write
       held     one file held open for the whole run: pwrite at growing offsets, each
                chunk read back at once and an older one too
       extract  a tarball of part of a real source tree, extracted again and again,
                every file checksummed against the original
       copy     cp -a / mv / rm -rf of the extracted trees
  3. meanwhile `mlustre upgrade ... --release 2.0` of MDT0000, OST0000, OST0001 (each
     onto its failover partner) and the MGS, a few seconds apart, then OST0001 back
     to 1.8 (onto its first node);
  4. at the end every byte is verified (all records, the held file through its
     descriptor and a fresh open, the trees), the cluster is stopped and the work
     directory removed (kept on failure: logs are in its data/ directory);
  5. a timeline of the failovers (barrier, stop and restart times, the writer's
     stall around each), the writer's throughput over time, a summary, an SVG plot
     (--plot) and, with --json, a machine-readable report.

Exit status 0 only if no system call failed, every byte verified and every upgrade
succeeded; 1 otherwise, 2 for bad arguments, 128+N after signal N (cleaned up).
"""
