-- Append messages to a topic's stream and publish each on its channel, atomically.
-- KEYS: stream, seq counter, epoch. ARGV: channel, maxlen, epoch candidate, dedupe key prefix,
-- dedupe ttl (s), sender, then (message id, body) pairs. Returns {epoch, {seq of each message}}.
-- A message id already appended within the ttl, in this epoch, is not appended again; its seq
-- is returned. The dedupe key holds '<epoch>:<seq>': after the topic started over, the number
-- would name nothing, so the message is appended again. (A bare number, as written before
-- epochs were kept there, counts as this epoch's.)
-- Each entry holds the body ('d'), the declared sender ('s') and when Redis appended it ('t', in
-- milliseconds since the epoch, from TIME): receivers judge a message's age against it when
-- they read it from the stream.
-- A maxlen of 0 keeps every entry (a queue the workers trim as they consume); an empty channel
-- publishes nothing.
-- Keys that are not as this script writes them (an agent's Redis user may write its topics'
-- keys too) would make every later call fail, or receivers misread the topic: an epoch that is
-- not a plain token of at most 64 characters, a counter that is no number (both checked first),
-- a stream of another type or whose ids went beyond the counter, even if those entries were
-- trimmed away since (both found when the call's first append fails for that reason: no
-- command is spent on them while the stream is sound). The topic then starts over in a new
-- epoch, as after a Redis that lost its data: receivers see the new epoch and read it from the
-- start.
local function damaged(epoch)
  if epoch and (#epoch > 64 or not string.match(epoch, '^[%w%-]+$')) then
    return true
  end
  -- At most 13 digits: Lua writes larger numbers in exponent form, which is no stream id.
  local seq = redis.call('GET', KEYS[2]) or '0'
  return not string.match(seq, '^%d+$') or #seq > 13
end

-- Whether an append failed because the stream is not as this script leaves it.
local function unsound(reply)
  return string.find(reply.err, 'WRONGTYPE', 1, true)
    or string.find(reply.err, 'smaller than the target stream top item', 1, true)
end

local epoch = redis.call('GET', KEYS[3])
local function start_over()
  redis.call('DEL', KEYS[1], KEYS[2])
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
if damaged(epoch) or not epoch then
  start_over()
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

local clock = redis.call('TIME')
local stamp = clock[1] .. string.format('%03d', math.floor(tonumber(clock[2]) / 1000))

local function append(seq, body)
  if ARGV[2] == '0' then
    return redis.pcall('XADD', KEYS[1], seq .. '-0', 'd', body, 's', ARGV[6], 't', stamp)
  end
  return redis.pcall(
    'XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'd', body, 's', ARGV[6], 't', stamp
  )
end

-- Append and publish every message; nil (nothing of this call appended) when the stream is
-- unsound, else the seqs.
local function append_all()
  local seqs = {}
  local added = 0
  for i = 7, #ARGV, 2 do
    local dedupe = ARGV[4] .. ARGV[i]
    local prior = appended(redis.call('GET', dedupe))
    if prior then
      table.insert(seqs, tonumber(prior))
    else
      local seq = redis.call('INCR', KEYS[2])
      local reply = append(seq, ARGV[i + 1])
      if reply.err then
        if added == 0 and unsound(reply) then
          return nil
        end
        return redis.error_reply(reply.err)  -- the counter keeps a gap: readers skip it
      end
      added = added + 1
      redis.call('SET', dedupe, epoch .. ':' .. seq, 'EX', ARGV[5])
      if ARGV[1] ~= '' then
        redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[6] .. ' ' .. ARGV[i + 1])
      end
      table.insert(seqs, seq)
    end
  end
  return seqs
end

local seqs = append_all()
if seqs == nil then
  start_over()
  seqs = append_all() or redis.error_reply('the stream is unsound after starting over')
end
if seqs.err then
  return seqs
end
return {epoch, seqs}
