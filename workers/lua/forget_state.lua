-- A forget's step in Redis for one user of one zone (see forget_journal.py): delete the user's
-- consolidation keys, add how many went to the forget's journal, and take the user off the
-- zone's waiting list. One step, so that a call whose reply is lost leaves its count behind.
-- KEYS: the journal, the zone's users set, then the user's keys to delete. ARGV: user id.
-- Returns the journal's count (this call's deletions and those of earlier calls).
local deleted = redis.call('DEL', unpack(KEYS, 3))
local total = redis.call('HINCRBY', KEYS[1], 'redis_keys_deleted', deleted)
redis.call('SREM', KEYS[2], ARGV[1])
return total
