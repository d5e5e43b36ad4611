-- Start (or resume) a consolidation run for one (zone, user): the pending episode ids become
-- the run's plan, atomically, so an id is in exactly one of the two.
-- KEYS: pending set, plan. Returns the plan (JSON text), or false when there is nothing to do.
local plan = redis.call('GET', KEYS[2])
if plan then
  return plan
end
local ids = redis.call('SMEMBERS', KEYS[1])
if #ids == 0 then
  return false
end
table.sort(ids)
plan = cjson.encode({episodes = ids, finalized = false})
redis.call('SET', KEYS[2], plan)
redis.call('DEL', KEYS[1])
return plan
