"""Lua scripts of the Redis engine.

Fencing: Redis replicates asynchronously, so a replica promoted by a failover (or a server
restarted without persistence, or from an older snapshot) may lack publications the old
server acknowledged, and would hand their offsets out again to other publications. Each
channel's meta hash therefore records (field ``run``) the ``run_id`` of the server that last
wrote it, and the engine passes the run_id of the server each script runs on (learnt per
connection, see :mod:`.redis_connection`). When they differ, the scripts start a new epoch
(the stream and offset start again from 0), so subscribers are told (``recovered: false``,
a resubscribe) instead of being given reused offsets. Conservative: after a failover every
channel starts a new epoch on its next write or history read, lost writes or not. A meta
without ``run`` (written before fencing existed) is adopted by the first server that sees it.

Each script touches the keys of one channel only (they share a hash tag), so the engine works
on Redis Cluster too. Times come from Redis (``TIME``) so that nodes with skewed clocks agree
on presence expiry. Stream entry ids are ``<offset>-0``: the offset is the id, which makes
"after offset N" the inclusive range start ``N+1`` (no Redis 6.2 exclusive ranges needed).
"""

from __future__ import annotations

__all__ = [
    "HISTORY",
    "NODE_CHANNELS",
    "NODE_INDEX",
    "PRESENCE_ADD",
    "PRESENCE_GET",
    "PRESENCE_REMOVE",
    "PRESENCE_REMOVE_NODE",
    "PUBLISH",
    "PUBLISH_ONCE",
    "SCRIPTS",
    "sharded",
]


def sharded(script: str) -> str:
    """``script`` with ``SPUBLISH`` for ``PUBLISH`` (Redis Cluster, sharded pub/sub): the
    shard channel carries the channel's hash tag, so it is in the slot of the script's keys."""
    return script.replace("redis.call('publish',", "redis.call('spublish',")


#: KEYS: stream, meta, and for a keyed publish the idempotency key (same hash tag).
#: ARGV: publication JSON without offset/prev/epoch, history size, stream TTL (ms), meta TTL
#: (ms), epoch to use if the stream is new, pub/sub channel, idempotency window (ms, 0 without
#: a key), run_id of this server (fencing, see the module doc).
#: Returns {offset, epoch, 1 if the key was seen (nothing written) else 0}. The PUBLISH happens
#: inside the script, so pub/sub delivery order is offset order on every node; the key is
#: checked and set in the same script, so a retry can never write twice. The key stores the
#: first result ("offset,epoch"), returned to every retry until it expires.
PUBLISH = """
if KEYS[3] then
  local seen = redis.call('get', KEYS[3])
  if seen then
    local comma = string.find(seen, ',', 1, true)
    return {tonumber(string.sub(seen, 1, comma - 1)), string.sub(seen, comma + 1), 1}
  end
end
local meta = redis.call('hmget', KEYS[2], 'epoch', 'run')
local epoch = meta[1]
if epoch and meta[2] ~= ARGV[8] then
  if meta[2] then
    epoch = false
  else
    redis.call('hset', KEYS[2], 'run', ARGV[8])
  end
end
if not epoch then
  epoch = ARGV[5]
  redis.call('del', KEYS[1], KEYS[2])
  redis.call('hset', KEYS[2], 'epoch', epoch, 'run', ARGV[8])
end
local offset = redis.call('hincrby', KEYS[2], 'offset', 1)
local body = string.format('{"offset":%d,"prev":%d,"epoch":%s,', offset, offset - 1,
  cjson.encode(epoch)) .. string.sub(ARGV[1], 2)
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], string.format('%d-0', offset), 'p', body)
redis.call('pexpire', KEYS[1], ARGV[3])
redis.call('pexpire', KEYS[2], ARGV[4])
redis.call('publish', ARGV[6], '{"t":"p",' .. string.sub(body, 2))
if KEYS[3] then
  redis.call('set', KEYS[3], string.format('%d,%s', offset, epoch), 'PX', ARGV[7])
end
return {offset, epoch, 0}
"""

#: A keyed publish to a channel without history. KEYS: the idempotency key. ARGV: window (ms),
#: pub/sub channel, message. Returns 1 if published, 0 if the key was seen (nothing sent).
PUBLISH_ONCE = """
if redis.call('set', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('publish', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

#: KEYS: stream, meta. ARGV: since offset ('' = from the start), limit (negative = all),
#: '1' = newest first, '1' = create the meta if missing, new epoch, meta TTL (ms), run_id of
#: this server (fencing, see the module doc).
#: Returns {offset, epoch, {publication JSON, ...}}, read atomically.
HISTORY = """
local meta = redis.call('hmget', KEYS[2], 'offset', 'epoch', 'run')
local offset, epoch = tonumber(meta[1]) or 0, meta[2]
if epoch and meta[3] ~= ARGV[7] then
  if meta[3] then
    epoch = false
  else
    redis.call('hset', KEYS[2], 'run', ARGV[7])
  end
end
if not epoch then
  if ARGV[4] ~= '1' then return {0, '', {}} end
  epoch, offset = ARGV[5], 0
  redis.call('del', KEYS[1], KEYS[2])
  redis.call('hset', KEYS[2], 'epoch', epoch, 'offset', 0, 'run', ARGV[7])
  redis.call('pexpire', KEYS[2], ARGV[6])
end
local out = {}
local limit = tonumber(ARGV[2])
if limit ~= 0 then
  local first = '-'
  if ARGV[1] ~= '' then first = string.format('%d-0', tonumber(ARGV[1]) + 1) end
  local args
  if ARGV[3] == '1' then
    args = {'xrevrange', KEYS[1], '+', first}
  else
    args = {'xrange', KEYS[1], first, '+'}
  end
  if limit > 0 then
    args[5] = 'COUNT'
    args[6] = limit
  end
  for i, entry in ipairs(redis.call(unpack(args))) do out[i] = entry[2][2] end
end
return {offset, epoch, out}
"""

# Presence of a channel is four keys: a hash (client id -> ClientInfo JSON), a sorted set
# (client id -> expiry), a hash (client id -> owning node instance) and a sorted set of
# tombstones (client id -> expiry): clients whose entry a dead-node cleanup removed, and
# whose leave it published. All times are Redis time in ms.
_NOW = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: presence, expiry, owners, tombstones. ARGV: client id, ClientInfo JSON, TTL (ms),
#: owner ('' = none). Returns 0 (the entry was there), 1 (it was not) or 2 (a live tombstone
#: was: a dead-node cleanup removed it and pushed its leave). The keys' own TTL only ever
#: grows, so it covers the longest-lived member.
PRESENCE_ADD = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
local result = 0
if redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  result = 1
  local left = redis.call('zscore', KEYS[4], ARGV[1])
  if left then
    redis.call('zrem', KEYS[4], ARGV[1])
    if tonumber(left) > now then result = 2 end
  end
end
redis.call('zadd', KEYS[2], now + ttl, ARGV[1])
if ARGV[4] ~= '' then
  redis.call('hset', KEYS[3], ARGV[1], ARGV[4])
else
  redis.call('hdel', KEYS[3], ARGV[1])
end
for i = 1, 3 do
  if redis.call('pttl', KEYS[i]) < ttl then redis.call('pexpire', KEYS[i], ttl) end
end
return result
"""
)

#: KEYS: presence, expiry, owners, tombstones. ARGV: client id.
#: Returns 0 when only a tombstone was there (its leave was published), else 1.
PRESENCE_REMOVE = """
local removed = redis.call('hdel', KEYS[1], ARGV[1])
redis.call('zrem', KEYS[2], ARGV[1])
redis.call('hdel', KEYS[3], ARGV[1])
if redis.call('zrem', KEYS[4], ARGV[1]) == 1 and removed == 0 then return 0 end
return 1
"""

#: KEYS: presence, expiry, owners, tombstones. ARGV: owner, tombstone TTL (ms), pub/sub
#: channel for leaves ('' = publish none), origin node name.
#: Removes the owner's entries (expired ones too), leaves a tombstone for each and publishes
#: its leave, all in one atomic step: of concurrent callers exactly one removes an entry.
#: Returns the ClientInfo JSON of the entries removed.
PRESENCE_REMOVE_NODE = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
local owners = redis.call('hgetall', KEYS[3])
local removed = {}
for i = 1, #owners, 2 do
  if owners[i + 1] == ARGV[1] then
    local client = owners[i]
    local info = redis.call('hget', KEYS[1], client)
    redis.call('hdel', KEYS[1], client)
    redis.call('zrem', KEYS[2], client)
    redis.call('hdel', KEYS[3], client)
    if info then
      redis.call('zadd', KEYS[4], now + ttl, client)
      removed[#removed + 1] = info
      if ARGV[3] ~= '' then
        redis.call('publish', ARGV[3],
          '{"t":"l","info":' .. info .. ',"origin":' .. cjson.encode(ARGV[4]) .. '}')
      end
    end
  end
end
redis.call('zremrangebyscore', KEYS[4], '-inf', now)
if #removed > 0 and redis.call('pttl', KEYS[4]) < ttl then redis.call('pexpire', KEYS[4], ttl) end
return removed
"""
)

#: KEYS: a node's index (sorted set: channel -> expiry). ARGV: channel, TTL (ms).
NODE_INDEX = (
    _NOW
    + """
local ttl = tonumber(ARGV[2])
redis.call('zadd', KEYS[1], now + ttl, ARGV[1])
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('pttl', KEYS[1]) < ttl then redis.call('pexpire', KEYS[1], ttl) end
return 1
"""
)

#: KEYS: a node's index. Returns the channels whose entry has not expired.
NODE_CHANNELS = (
    _NOW
    + """
return redis.call('zrangebyscore', KEYS[1], '(' .. now, '+inf')
"""
)

#: KEYS: presence, expiry, owners. ARGV: 'stats' or 'all'.
#: Removes expired members, then returns HGETALL (or {clients, distinct users}).
PRESENCE_GET = (
    _NOW
    + """
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
if #expired > 0 then
  for i = 1, #expired, 1000 do
    local last = math.min(i + 999, #expired)
    redis.call('hdel', KEYS[1], unpack(expired, i, last))
    redis.call('hdel', KEYS[3], unpack(expired, i, last))
  end
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
if ARGV[1] ~= 'stats' then return redis.call('hgetall', KEYS[1]) end
local values = redis.call('hvals', KEYS[1])
local users, n = {}, 0
for _, value in ipairs(values) do
  local ok, info = pcall(cjson.decode, value)
  local user = value
  if ok and type(info) == 'table' and type(info.user) == 'string' then user = info.user end
  if not users[user] then
    users[user] = true
    n = n + 1
  end
end
return {#values, n}
"""
)

#: Every script by name.
SCRIPTS: dict[str, str] = {
    "publish": PUBLISH,
    "publish_once": PUBLISH_ONCE,
    "history": HISTORY,
    "presence_add": PRESENCE_ADD,
    "presence_get": PRESENCE_GET,
    "presence_remove": PRESENCE_REMOVE,
    "presence_remove_node": PRESENCE_REMOVE_NODE,
    "node_index": NODE_INDEX,
    "node_channels": NODE_CHANNELS,
}
