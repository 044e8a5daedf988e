"""Which shard a channel lives on, and the ``redis+shards://`` URL.

Channels are placed by jump consistent hashing (Lamping & Veach, "A Fast, Minimal Memory,
Consistent Hash Algorithm", 2014) of a 64-bit digest of the channel name: no ring to build or
keep, an even spread, and appending a shard to the list moves only about ``1/(n+1)`` of the
channels (each to the new shard). The shard is the *position* in the list: reordering the
list, or removing a shard other than the last, moves most channels.
"""

from __future__ import annotations

import hashlib

__all__ = ["SCHEME", "jump_hash", "parse_shards_url", "shard_index"]

SCHEME = "redis+shards://"

_MASK = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757


def jump_hash(key: int, buckets: int) -> int:
    """The bucket in ``range(buckets)`` of the 64-bit ``key`` (Lamping & Veach's algorithm,
    written out because it is eight lines: no library worth a dependency ships it)."""
    if buckets < 1:
        raise ValueError("jump_hash needs at least one bucket")
    key &= _MASK
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_index(channel: str, shards: int) -> int:
    """The shard of ``channel`` among ``shards``: stable across processes, Python versions
    and machines (a BLAKE2b digest, not ``hash()``, which is salted per process)."""
    digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
    return jump_hash(int.from_bytes(digest, "big"), shards)


def parse_shards_url(spec: str) -> list[str]:
    """``redis+shards://[USER:PASSWORD@]H:P[,H:P...][/DB]`` -> one ``redis://`` URL per shard,
    in the order given (which places the channels). Raises ValueError naming the problem."""
    if not spec.startswith(SCHEME):
        raise ValueError(f"engine {spec!r}: a sharded engine URL starts with {SCHEME}")
    rest = spec[len(SCHEME) :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"engine {spec!r}: {SCHEME} takes no query or fragment")
    hosts, _, db = rest.partition("/")
    auth = ""
    if "@" in hosts:
        # The same credentials for every shard, kept URL-encoded as given (redis-py decodes).
        userinfo, hosts = hosts.rsplit("@", 1)
        auth = userinfo + "@"
    if db and not (db.isdigit() and db.isascii()):
        raise ValueError(f"engine {spec!r}: the database {db!r} is not a number")
    if not hosts:
        raise ValueError(f"engine {spec!r}: no shard: use {SCHEME}HOST:PORT[,HOST:PORT...][/DB]")
    urls: list[str] = []
    seen: set[tuple[str, int]] = set()
    for address in hosts.split(","):
        host, sep, port_text = address.rpartition(":")
        if not sep or not host or not port_text:
            raise ValueError(f"engine {spec!r}: shard {address!r} is not HOST:PORT")
        if not (port_text.isdigit() and port_text.isascii() and 0 < int(port_text) < 65536):
            raise ValueError(f"engine {spec!r}: shard {address!r} has no valid port")
        port = int(port_text)
        if (host.lower(), port) in seen:
            raise ValueError(f"engine {spec!r}: shard {address!r} is listed twice")
        seen.add((host.lower(), port))
        urls.append(f"redis://{auth}{host}:{port}/{int(db) if db else 0}")
    return urls
