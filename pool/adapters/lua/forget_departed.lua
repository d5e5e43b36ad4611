-- Forget deregistered agents whose own ingest queues the workers read through, atomically with
-- the checks that allow it, and delete what is left of those queues.
-- KEYS: the registry's clearance hash and departed set, then per agent 1 + 4 per zone keys: its
-- heartbeat key, then each zone's queue (stream, counter, epoch) and the workers' cursor in it.
-- ARGV: the agent ids, in KEYS' order.
-- An agent registered again is forgotten, its queues kept (they are a registered agent's now);
-- one that beats (a process running on) or whose queues hold something the workers have not
-- stored (written since they looked) is kept. Returns the ids forgotten.
local zones = ((#KEYS - 2) / #ARGV - 1) / 4
local forgotten = {}
for a = 1, #ARGV do
  local base = 2 + (a - 1) * (1 + 4 * zones)
  local id = ARGV[a]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    redis.call('SREM', KEYS[2], id)
    table.insert(forgotten, id)
  elseif redis.call('EXISTS', KEYS[base + 1]) == 0 then
    local through = true
    local queues = {}
    for z = 0, zones - 1 do
      local k = base + 2 + 4 * z
      local epoch = redis.call('GET', KEYS[k + 2])
      if epoch then
        local seq = redis.call('GET', KEYS[k + 1]) or '0'
        if redis.call('GET', KEYS[k + 3]) ~= epoch .. ' ' .. seq then
          through = false
        end
      end
      table.insert(queues, k)
    end
    if through then
      for _, k in ipairs(queues) do
        redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3])
      end
      redis.call('SREM', KEYS[2], id)
      table.insert(forgotten, id)
    end
  end
end
return forgotten
