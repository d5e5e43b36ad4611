-- Append messages to a topic's stream and publish each on its channel, atomically.
-- KEYS: stream, seq counter, epoch. ARGV: channel, maxlen, epoch candidate, dedupe key prefix,
-- dedupe ttl (s), sender, then (message id, body) pairs. Returns {epoch, {seq of each message}}.
-- A message id already appended within the ttl, in this epoch, is not appended again; its seq
-- is returned. The dedupe key holds '<epoch>:<seq>': after the topic started over, the number
-- would name nothing, so the message is appended again. (A bare number, as written before
-- epochs were kept there, counts as this epoch's.)
-- A maxlen of 0 keeps every entry (a queue the workers trim as they consume); an empty channel
-- publishes nothing.
-- Keys that are not as this script writes them (an agent's Redis user may write its topics'
-- keys too: an epoch that is not a plain token of at most 64 characters, a counter that is no
-- number, a stream of another type or whose ids went beyond the counter, even if the entries
-- were trimmed away since) would make every later call fail, or receivers misread the topic.
-- The topic then starts over in a new epoch, as after a Redis that lost its data: receivers
-- see the new epoch and read it from the start.
local function damaged(epoch)
  if epoch and (#epoch > 64 or not string.match(epoch, '^[%w%-]+$')) then
    return true
  end
  -- At most 13 digits: Lua writes larger numbers in exponent form, which is no stream id.
  local seq = redis.call('GET', KEYS[2]) or '0'
  if not string.match(seq, '^%d+$') or #seq > 13 then
    return true
  end
  local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
  if info.err then
    return not string.find(info.err, 'no such key', 1, true)  -- else: of another type
  end
  local top
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      top = string.match(info[i + 1], '^(%d+)-')
    end
  end
  if not top then
    return true
  end
  return #top > #seq or (#top == #seq and top > seq)
end

local epoch = redis.call('GET', KEYS[3])
if damaged(epoch) then
  redis.call('DEL', KEYS[1], KEYS[2])
  epoch = nil
end
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
-- The seq a message id got in this epoch, or nil.
local function appended(prior)
  if not prior then
    return nil
  end
  if string.match(prior, '^%d+$') then
    return prior
  end
  local mark = epoch .. ':'
  if string.sub(prior, 1, #mark) == mark then
    return string.match(string.sub(prior, #mark + 1), '^%d+$')
  end
  return nil
end

local seqs = {}
for i = 7, #ARGV, 2 do
  local dedupe = ARGV[4] .. ARGV[i]
  local prior = appended(redis.call('GET', dedupe))
  if prior then
    table.insert(seqs, tonumber(prior))
  else
    local seq = redis.call('INCR', KEYS[2])
    if ARGV[2] == '0' then
      redis.call('XADD', KEYS[1], seq .. '-0', 'd', ARGV[i + 1], 's', ARGV[6])
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'd', ARGV[i + 1], 's', ARGV[6])
    end
    redis.call('SET', dedupe, epoch .. ':' .. seq, 'EX', ARGV[5])
    if ARGV[1] ~= '' then
      redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[6] .. ' ' .. ARGV[i + 1])
    end
    table.insert(seqs, seq)
  end
end
return {epoch, seqs}
