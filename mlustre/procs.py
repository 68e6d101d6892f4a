"""procs.py - moved to mlustre/localcluster/daemons.py; re-exported for the daemons that
still import it from here (fuse_client/mount_main.py, servers/target.py)."""

from .localcluster.daemons import (  # noqa: F401
    DaemonFailed,
    detach_stdout_to_stderr,
    log_tail,
    spawn,
    stop_pid,
    wait_ready,
)
