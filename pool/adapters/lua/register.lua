-- Register an agent unless its id holds another clearance.
-- KEYS: agents hash, clearance hash. ARGV: agent id, clearance, AgentInfo JSON.
-- Returns 1 for a new agent, 0 for an update; errors with "CONFLICT <held clearance>".
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and held ~= ARGV[2] then
  return redis.error_reply('CONFLICT ' .. held)
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return held and 0 or 1
