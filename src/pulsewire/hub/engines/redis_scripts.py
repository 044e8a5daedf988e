"""Lua scripts of the Redis engine.

Each script touches the keys of one channel only (they share a hash tag), so the engine works
on Redis Cluster too. Times come from Redis (``TIME``) so that nodes with skewed clocks agree
on presence expiry. Stream entry ids are ``<offset>-0``: the offset is the id, which makes
"after offset N" the inclusive range start ``N+1`` (no Redis 6.2 exclusive ranges needed).
"""

from __future__ import annotations

__all__ = ["HISTORY", "PRESENCE_ADD", "PRESENCE_GET", "PUBLISH", "PUBLISH_ONCE"]

#: KEYS: stream, meta, and for a keyed publish the idempotency key (same hash tag).
#: ARGV: publication JSON without offset/prev/epoch, history size, stream TTL (ms), meta TTL
#: (ms), epoch to use if the stream is new, pub/sub channel, idempotency window (ms).
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
local epoch = redis.call('hget', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('del', KEYS[1], KEYS[2])
  redis.call('hset', KEYS[2], 'epoch', epoch)
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
#: '1' = newest first, '1' = create the meta if missing, new epoch, meta TTL (ms).
#: Returns {offset, epoch, {publication JSON, ...}}, read atomically.
HISTORY = """
local meta = redis.call('hmget', KEYS[2], 'offset', 'epoch')
local offset, epoch = tonumber(meta[1]) or 0, meta[2]
if not epoch then
  if ARGV[4] ~= '1' then return {0, '', {}} end
  epoch, offset = ARGV[5], 0
  redis.call('del', KEYS[1], KEYS[2])
  redis.call('hset', KEYS[2], 'epoch', epoch)
  redis.call('hset', KEYS[2], 'offset', 0)
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

#: KEYS: presence hash, presence expiry zset. ARGV: client id, ClientInfo JSON, TTL (ms).
#: The keys' own TTL only ever grows, so it covers the longest-lived member.
PRESENCE_ADD = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[2], now + ttl, ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('pttl', key) < ttl then redis.call('pexpire', key, ttl) end
end
return 1
"""

#: KEYS: presence hash, presence expiry zset. ARGV: 'stats' or 'all'.
#: Removes expired members, then returns HGETALL (or {clients, distinct users}).
PRESENCE_GET = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
if #expired > 0 then
  for i = 1, #expired, 1000 do
    redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
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
