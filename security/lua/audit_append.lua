-- Append one entry to the audit stream, if the chain's head is still the one it links to.
-- KEYS: stream, head (a hash: seq, hash). ARGV: expected head seq (0 for an empty log),
-- expected head hash, the entry's seq, the entry's JSON, the entry's hash.
-- Returns {1} when appended (stream id <seq>-0; the head moves to the entry), else
-- {0, head seq, head hash ('' for an empty log)}: another writer appended first, and the caller
-- re-links its entry and tries again. The stream is never trimmed.
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local seq = head[1] or '0'
local hash = head[2] or ''
if seq ~= ARGV[1] or (seq ~= '0' and hash ~= ARGV[2]) then
  return {0, seq, hash}
end
redis.call('XADD', KEYS[1], ARGV[3] .. '-0', 'e', ARGV[4])
redis.call('HSET', KEYS[2], 'seq', ARGV[3], 'hash', ARGV[5])
return {1}
