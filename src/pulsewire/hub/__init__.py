"""The real-time hub: channels, presence, history and recovery over pluggable engines."""

from .auth import Credentials
from .config import ChannelOptions, HubConfig, load_config
from .errors import Disconnect, DisconnectCode, ErrorCode, HubError
from .hub import Hub
from .session import ConnectRequest, Session
from .types import ClientInfo, HistoryResult, Publication, StreamPosition

__all__ = [
    "ChannelOptions",
    "ClientInfo",
    "ConnectRequest",
    "Credentials",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "HistoryResult",
    "Hub",
    "HubConfig",
    "HubError",
    "Publication",
    "Session",
    "StreamPosition",
    "load_config",
]
