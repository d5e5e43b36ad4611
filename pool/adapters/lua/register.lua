-- Register an agent unless its id holds another clearance, or its entry is not the one expected.
-- KEYS: agents hash, clearance hash, the hash of registry changes not yet audited. ARGV: agent
-- id, clearance, AgentInfo JSON, the entry the caller read ('' : none).
-- Returns 1 for a new agent (noted 'new' until the caller has audited it), 0 for an update, -1
-- when the entry is not the one read (nothing changed: read it again); errors with
-- "CONFLICT <held clearance>".
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if (entry or '') ~= ARGV[4] then
  return -1
end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and held ~= ARGV[2] then
  return redis.error_reply('CONFLICT ' .. held)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if held then
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], 'new')
return 1
