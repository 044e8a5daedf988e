"""Transports: adapters that carry a hub :class:`~pulsewire.hub.Session` over a connection."""
