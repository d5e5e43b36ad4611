-- The end of a forget, once audited (see forget_journal.py): delete each zone's journal whose
-- tombstones were all published. A journal that is not was written by a forget of the same
-- user that ran beside this one (one of their locks lapsed), which ends it itself. UNLINK: a
-- journal holds a field per record, which Redis frees in the background.
-- KEYS: the journals. Returns how many were deleted.
local deleted = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'published') == '1' then
    deleted = deleted + redis.call('UNLINK', key)
  end
end
return deleted
