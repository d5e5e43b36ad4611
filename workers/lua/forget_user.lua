-- After a run: forget the user from the zone's waiting list when nothing is pending any more
-- (atomic, so an episode queued meanwhile keeps the user listed).
-- KEYS: pending set, users set. ARGV: user id.
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
