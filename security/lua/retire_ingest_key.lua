-- Retire an old workers' ingest key, if its stored entry is still the one the caller read:
-- delete its material (the first key's strings then hold 'retired'), keep its dates, and note
-- the retirement until it is audited (hivemem.security.key_changes). An old key never becomes
-- current again, and its entry changes only when it is retired: the caller has checked the rest.
-- KEYS: the ring, the first key's string, the first key's public half, the hash of key changes
-- not audited yet. ARGV: the key's id, its entry as read, its retired record (JSON), the note's
-- field and value.
-- Returns 1 when retired, 0 when the entry is not the one read (nothing changed: read again).
local first = ARGV[1] == 'ingest'
local entry
if first then
  entry = redis.call('GET', KEYS[2])
else
  entry = redis.call('HGET', KEYS[1], 'key:' .. ARGV[1])
end
if entry ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], 'key:' .. ARGV[1], 'public:' .. ARGV[1], 'replaced:' .. ARGV[1])
redis.call('HSET', KEYS[1], 'retired:' .. ARGV[1], ARGV[3])
if first then
  redis.call('SET', KEYS[2], 'retired')
  redis.call('SET', KEYS[3], 'retired')
end
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
return 1
