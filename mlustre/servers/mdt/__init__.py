"""The metadata target: its server (server.py) and its storage (store.py and the parts it
composes).  `MdtServer` is re-exported so that ``from mlustre.servers.mdt import MdtServer``
keeps working."""

from .server import MdtServer

__all__ = ["MdtServer"]
