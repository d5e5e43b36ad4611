-- After a run: forget the user from the zone's waiting list when nothing is pending any more
-- and no rebuild is asked for (atomic, so an episode queued meanwhile keeps the user listed).
-- KEYS: pending set, users set, rebuild marker. ARGV: user id.
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
