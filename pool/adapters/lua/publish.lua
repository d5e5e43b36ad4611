-- Append messages to a topic's stream and publish each on its channel, atomically.
-- KEYS: stream, seq counter, epoch. ARGV: channel, maxlen, epoch candidate, dedupe key prefix,
-- dedupe ttl (s), sender, then (message id, body) pairs. Returns {epoch, {seq of each message}}.
-- A message id already appended within the ttl is not appended again; its seq is returned.
-- A maxlen of 0 keeps every entry (a queue the workers trim as they consume); an empty channel
-- publishes nothing.
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
local seqs = {}
for i = 7, #ARGV, 2 do
  local dedupe = ARGV[4] .. ARGV[i]
  local prior = redis.call('GET', dedupe)
  if prior then
    table.insert(seqs, tonumber(prior))
  else
    local seq = redis.call('INCR', KEYS[2])
    if ARGV[2] == '0' then
      redis.call('XADD', KEYS[1], seq .. '-0', 'd', ARGV[i + 1], 's', ARGV[6])
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'd', ARGV[i + 1], 's', ARGV[6])
    end
    redis.call('SET', dedupe, seq, 'EX', ARGV[5])
    if ARGV[1] ~= '' then
      redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[6] .. ' ' .. ARGV[i + 1])
    end
    table.insert(seqs, seq)
  end
end
return {epoch, seqs}
