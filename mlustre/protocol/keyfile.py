"""keyfile.py - a filesystem's shared key on disk.

One line, `mlustre-key-v1 <64 hex digits> [integrity|privacy]`, in a file of mode
0600: only its owner may read it, as ssh insists for private keys. A key file that
others can read is refused rather than used, since anyone who reads it can join the
filesystem as a server or a client.

The last word is the filesystem's framing mode (aead.py): whether its frames are
only authenticated or also encrypted. It lives in the key file because every server
and client of the filesystem already has that file, so they all agree without a
setting of their own; a file without it (made before modes existed) is integrity.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .auth import KEY_BYTES, FsKey

HEADER = "mlustre-key-v1"
MODES = {"integrity": False, "privacy": True}


class KeyFileError(Exception):
    """A key file that cannot be used; the message says why, in one line."""


def format_key(key: bytes, *, privacy: bool | None = None) -> str:
    """The key file's line (the mode word only when asked, or when `key` carries one)."""
    if privacy is None:
        privacy = getattr(key, "privacy", None)
    mode = "" if privacy is None else " privacy" if privacy else " integrity"
    return f"{HEADER} {key.hex()}{mode}\n"


def create_key_file(path: str | os.PathLike[str], *, force: bool = False,
                    privacy: bool = False) -> FsKey:
    """Write a new random key with mode 0600 (never wider, whatever the umask), and
    the framing mode; an existing file is replaced only with force."""
    path = Path(path)
    key = FsKey(secrets.token_bytes(KEY_BYTES), privacy)
    if path.exists() and not force:
        raise KeyFileError(f"{path} exists; not overwriting it (use --force to replace "
                           f"the key: every server and client then needs the new one)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise KeyFileError(f"cannot create {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, format_key(key).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if someone created path meanwhile
    except OSError as e:
        raise KeyFileError(f"cannot create {path}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return key


def load_key(path: str | os.PathLike[str]) -> FsKey:
    """The key in path, with its mode; KeyFileError if it is missing, readable by
    others or malformed."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist "
                           f"(create one with `mlustre keygen {path}`)") from None
    except OSError as e:
        raise KeyFileError(f"cannot open key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(f"key file {path} is accessible by group or others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o}); "
                               f"it must be 0600: chmod 600 {path}")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = data.decode("ascii", errors="replace").split()
    if len(fields) not in (2, 3) or fields[0] != HEADER or fields[2:] and fields[2] not in MODES:
        raise KeyFileError(f"key file {path} is malformed: expected "
                           f"'{HEADER} <hex key> [integrity|privacy]'")
    try:
        key = bytes.fromhex(fields[1])
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"key file {path} is malformed: the key must be "
                           f"{KEY_BYTES * 2} hex digits")
    return FsKey(key, MODES[fields[2]] if fields[2:] else False)
