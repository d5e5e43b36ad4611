-- Start (or resume) a consolidation run for one (zone, user): up to ARGV[1] of the pending
-- episode ids (the lowest, in byte order) become the run's plan, atomically, so an id is in
-- exactly one of the two; the rest stay pending for the next run. With no episode pending but
-- the rebuild marker set, the plan is empty (a run over the traces that are left). A plan
-- taken clears the marker: the run rescans the user's traces.
-- KEYS: pending set, plan, rebuild marker. ARGV: the most episodes a plan takes.
-- Returns the plan (JSON text), or false when there is nothing to do.
local plan = redis.call('GET', KEYS[2])
if plan then
  return plan
end
local rebuild = redis.call('DEL', KEYS[3])
local ids = redis.call('SMEMBERS', KEYS[1])
if #ids == 0 then
  if rebuild == 0 then
    return false
  end
  plan = '{"episodes": [], "finalized": false}'
  redis.call('SET', KEYS[2], plan)
  return plan
end
table.sort(ids)
local most = tonumber(ARGV[1])
if #ids > most then
  local taken = {}
  for i = 1, most do
    taken[i] = ids[i]
  end
  ids = taken
  for start = 1, #ids, 1000 do
    redis.call('SREM', KEYS[1], unpack(ids, start, math.min(start + 999, #ids)))
  end
else
  redis.call('DEL', KEYS[1])
end
plan = cjson.encode({episodes = ids, finalized = false})
redis.call('SET', KEYS[2], plan)
return plan
