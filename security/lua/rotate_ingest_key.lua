-- Make a new current workers' ingest key, if the current key is still the one the caller read,
-- stamp the previous key's replacement with Redis's clock, and note the rotation until it is
-- audited (hivemem.security.key_changes).
-- KEYS: the ring, the hash of key changes not audited yet. ARGV: the new key's id, its wrapped
-- entry, its public half, the current key's id the caller read ('ingest': the first key), the
-- note's field and value.
-- Returns 1 when rotated, 0 when another key is current (nothing changed: read it again). A
-- request held up on its way until another rotation landed thus changes nothing.
local previous = redis.call('HGET', KEYS[1], 'current') or 'ingest'
if previous ~= ARGV[4] then
  return 0
end
local now = redis.call('TIME')
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
redis.call('HSET', KEYS[1], 'key:' .. ARGV[1], ARGV[2], 'public:' .. ARGV[1], ARGV[3],
  'replaced:' .. previous, stamp, 'current', ARGV[1], 'current_public', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
return 1
