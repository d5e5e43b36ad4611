-- Make a new active data key for a zone, if its active key is still the one the caller read,
-- and note the rotation until it is audited (hivemem.security.key_changes).
-- KEYS: the zone's key hash, the hash of key changes not audited yet. ARGV: the new key's id,
-- its wrapped entry, the active key's id the caller read ('' : none), the note's field and
-- value.
-- Returns 1 when rotated, 0 when another key is active (nothing changed: read it again). A
-- request held up on its way until another rotation landed thus changes nothing.
local active = redis.call('HGET', KEYS[1], 'active') or ''
if active ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], 'dek:' .. ARGV[1], ARGV[2], 'active', ARGV[1])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
return 1
