-- A registry change is audited: delete its note, if the agent's note is still that one.
-- KEYS: the hash of registry changes not yet audited. ARGV: agent id, the note.
-- Returns 1 when deleted, 0 when the agent's note was another or none.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
