-- Deregister an agent, or replace its registry entry (a new key), and take what it queued for
-- the workers out of its reach, atomically.
-- KEYS: the registry's agents hash, clearance hash and departed set, the departures hash, the
-- agent's heartbeat key, the hash of registry changes not yet audited, then 8 keys per zone: the
-- agent's ingest queue there (stream, counter, epoch) and the workers' cursor in it, then the
-- same four keys of the departure's queue.
-- ARGV: agent id, departure number, keep ('1': move each queue to the departure's and, when any
-- held something, note the departure, the agent's registry entry as it stood; '0': delete the
-- queues), the entry expected ('' : any), and a replacement entry and its access ('': none).
-- With a replacement the agent stays registered under it (its old key's writes departed),
-- noted 'rekeyed'; without, it is deregistered, noted 'departed <number> <keep> <queues>'. The
-- caller deletes the note once the audit entry is written (so that a call whose reply was
-- lost, or whose process stopped, leaves the rest to a later one).
-- Returns false when the agent is not registered, -1 when its entry is not the one expected
-- (nothing changed in both), else how many of its queues held anything (moved or deleted).
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return false
end
if ARGV[4] ~= '' and entry ~= ARGV[4] then
  return -1
end
local keep = ARGV[3] == '1'
local queues = 0
for i = 7, #KEYS, 8 do
  local held = false
  for j = 0, 3 do
    if redis.call('EXISTS', KEYS[i + j]) == 1 then
      held = true
      if keep then
        redis.call('RENAME', KEYS[i + j], KEYS[i + 4 + j])
      else
        redis.call('DEL', KEYS[i + j])
      end
    end
  end
  if held then
    queues = queues + 1
  end
end
if keep and queues > 0 then
  redis.call('HSET', KEYS[4], ARGV[2], entry)
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[6])
  redis.call('HSET', KEYS[6], ARGV[1], 'rekeyed')
  return queues
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[6], ARGV[1], 'departed ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. queues)
return queues
