"""The metadata target: its server (server.py) and its storage (store.py, which composes
the parts in the other modules).  `MdtServer` and the store's public names are re-exported
so that ``from mlustre.servers.mdt import MdtServer`` keeps working."""

from .server import MdtServer
from .store import Cred, MdtError, MdtStore, ReplayedUpdate

__all__ = ["Cred", "MdtError", "MdtServer", "MdtStore", "ReplayedUpdate"]
