"""constants.py - opcodes, message flags, connect flags and FID sequences.

Numbers follow Lustre's (lustre_idl.h) where Lustre has the same concept, so
that traces read familiarly; the rest are this project's own.
"""

from __future__ import annotations

# Message types (ptlrpc_body.pb_type)
REQUEST = 4711
ERR = 4712
REPLY = 4713

# OST opcodes
OST_GETATTR = 1
OST_SETATTR = 2
OST_READ = 3
OST_WRITE = 4
OST_CREATE = 5
OST_DESTROY = 6
OST_CONNECT = 8
OST_DISCONNECT = 9
OST_PUNCH = 10
OST_STATFS = 13
OST_SYNC = 16

# MDS opcodes
MDS_GETATTR = 33
MDS_GETATTR_NAME = 34
MDS_CLOSE = 35
MDS_REINT = 36
MDS_READPAGE = 37
MDS_CONNECT = 38
MDS_DISCONNECT = 39
MDS_GET_ROOT = 40
MDS_STATFS = 41
MDS_SYNC = 44
MDS_GETXATTR = 49
MDS_READLINK = 60  # Lustre reads symlinks via GETATTR; a separate opcode is simpler here
MDS_ACCESS = 61
MDS_FID2PATH = 62  # an inode's path from the root (Lustre: an OBD_IOC_FID2PATH ioctl)

# MDS REINT sub-operations (body["op"])
REINT_SETATTR = 1
REINT_CREATE = 2
REINT_LINK = 3
REINT_UNLINK = 4
REINT_RENAME = 5
# REINT_RENAME's "flags" (renameat2's): both sides of the wire read them
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
REINT_OPEN = 6
REINT_SETXATTR = 7
REINT_MKDIR = 8  # a CREATE with S_IFDIR in Lustre; separate here for clarity
REINT_SYMLINK = 9
REINT_RMDIR = 10
REINT_WRITE_UPDATE = 11  # size/mtime after write-back (Lustre: SOM / close epoch)
REINT_REMOVEXATTR = 12
REINT_SETLAYOUT = 13
REINT_ATIME = 14  # atime after a read (relatime), without touching ctime

# DLM opcodes (used from the DLM issue on)
LDLM_ENQUEUE = 101
LDLM_CONVERT = 102
LDLM_CANCEL = 103
LDLM_BL_CALLBACK = 104
LDLM_CP_CALLBACK = 105
LDLM_GL_CALLBACK = 106

# MGS opcodes
MGS_CONNECT = 250
MGS_DISCONNECT = 251
MGS_TARGET_REG = 253
MGS_CONFIG_READ = 256

OBD_PING = 400
# Administrative requests (lctl-like): parameters and control, not part of Lustre's wire.
OBD_ADMIN = 500

OPCODE_NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int)
                and (k.startswith(("OST_", "MDS_", "LDLM_", "MGS_", "OBD_")))}

# Message header flags (pb_flags)
MSG_LAST_REPLAY = 0x1
MSG_RESENT = 0x2
MSG_REPLAY = 0x4
MSG_REQ_REPLAY_DONE = 0x40
MSG_LOCK_REPLAY_DONE = 0x80

# Connect flags (ocd_connect_flags)
OBD_CONNECT_TRANSNO = 0x800
OBD_CONNECT_IBITS = 0x1000
OBD_CONNECT_CANCELSET = 0x400000
OBD_CONNECT_FID = 0x40000000
OBD_CONNECT_VBR = 0x80000000
OBD_CONNECT_FULL20 = 0x1000000000
OBD_CONNECT_UPDATE_LOCK = 0x8000000000000  # the SIR barrier lock (never landed in Lustre)

# Requests that change a target's state: a client sends them only while it holds the
# CR barrier lock of that target (SIR), so a frozen target receives none.
UPDATE_OPCODES = frozenset({OST_SETATTR, OST_WRITE, OST_CREATE, OST_DESTROY, OST_PUNCH,
                            MDS_REINT, MDS_CLOSE})


def is_update(opc: int, body: object) -> bool:
    """Does this request change the target (see UPDATE_OPCODES)? An open of an existing
    file changes nothing but open state, which recovery replays anyway (unless it
    truncates): it goes through a frozen barrier, as reads do."""
    if opc == MDS_REINT and isinstance(body, dict) and body.get("op") == REINT_OPEN:
        flags = body.get("flags", 0)
        return isinstance(flags, int) and bool(flags & 0o1000)  # O_TRUNC
    return opc in UPDATE_OPCODES

# FID sequences
FID_SEQ_START = 0x200000000
FID_SEQ_ROOT = 0x200000007
FID_SEQ_NORMAL = 0x200000400
FID_SEQ_UPDATE_LOCK = FID_SEQ_START + 3
UPDATE_LOCK_OID = 0x0BA771E7

# Sizes
MAX_HEADER = 1 << 20  # largest msgpack header accepted (directory pages, xattrs, layouts)
MAX_BULK = 16 << 20  # largest bulk accepted on the wire
BRW_MAX = 4 << 20  # largest bulk read/write payload in one RPC
# The largest file size (and so the largest object size: a stripe object is never longer
# than its file). It is what ext4 with 4 KiB blocks, the usual store under an OST's
# objects, accepts as a file size ((2^32 - 1) blocks), like Lustre's ldiskfs OSTs. One
# value for every layout, so that what an application may do does not depend on the
# stripe count. Checked by the client before any RPC (truncate past it: EFBIG; a write
# starting at or beyond it: EFBIG; one crossing it: short), by the MDT (setattr size,
# write update: EFBIG) and by the OSTs (write, punch: EFBIG); reported as "maxbytes"
# in the MDT's and OSTs' statfs replies (docs/architecture.md, "How an errno travels").
MAX_FILE_SIZE = ((1 << 32) - 1) << 12
