package redisstore

// The Lua scripts: each decision, ban write and unban is one script, run
// atomically by the server (see the layout on Store).

import "github.com/redis/go-redis/v9"

// redisLib holds what the budget scripts share. KEYS: 1 b:K, 2 p:K, 3 ban:K,
// 4 the ban index. ARGV: 1 now (ms), 2 refill rate (tokens/ms), 3 burst, 4
// ban time (ms), 5 ban factor, 6 max ban time (ms), 7 K, 8 channel, 9
// instance, 10 attempt TTL (ms), then the script's own.
const redisLib = `
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local function ms(x) return string.format('%.0f', x) end
-- the active ban of K, as a reply, or nil
local function banned()
  local b = redis.call('HMGET', KEYS[3], 'u', 'c', 's', 'f', 'r')
  if b[1] and tonumber(b[1]) > now then
    return {2, 0, tonumber(b[1]), tonumber(b[2]), tonumber(b[3]), tonumber(b[4]), b[5]}
  end
  return nil
end
-- the tokens of K at now (refilled), and the time of the refill
local function tokens()
  local t = redis.call('HMGET', KEYS[1], 't', 'l')
  local tok, last = tonumber(t[1]), tonumber(t[2])
  if not tok then return burst, now end
  if now > last then
    tok = math.min(burst, tok + (now - last) * rate)
    last = now
  elseif tok > burst then
    tok = burst
  end
  return tok, last
end
local function whole(tok) return math.floor(tok + 1e-6) end
local function store(tok, last)
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tok), 'l', ms(last))
  redis.call('PEXPIRE', KEYS[1], ms(math.ceil((burst - tok) / rate) + 1000))
end
-- the attempts in flight, once those past their deadline are dropped
local function pending()
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms(now))
  return redis.call('ZCARD', KEYS[2])
end
-- bans K: the count follows the ban record until its Forget time
local function ban()
  local cnt = 1
  local old = redis.call('HMGET', KEYS[3], 'c', 'f')
  if old[1] and now < tonumber(old[2]) then cnt = tonumber(old[1]) + 1 end
  local maxd = tonumber(ARGV[6])
  local d = tonumber(ARGV[4]) * tonumber(ARGV[5]) ^ (cnt - 1)
  if not (d < maxd) then d = maxd end
  local u = now + math.floor(d)
  local f = u + maxd
  redis.call('HSET', KEYS[3], 'u', ms(u), 's', ms(now), 'f', ms(f), 'c', cnt, 'r', 'budget')
  redis.call('PEXPIREAT', KEYS[3], ms(f))
  redis.call('ZADD', KEYS[4], ms(f), ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ms(now))
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[8], table.concat({'B', ARGV[9], ARGV[7], ms(u), ms(now), ms(f), cnt, 'budget'}, '|'))
  return {3, 0, u, cnt, now, f, 'budget'}
end
`

// redisAttempt: ARGV 11 is the attempt's number. Replies {0 allowed,
// remaining}, {1 busy, 0}, {2 banned, …ban} or {3 new ban, …ban}.
var redisAttempt = redis.NewScript(redisLib + `
local b = banned()
if b then return b end
local tok, last = tokens()
local p = pending()
local w = whole(tok)
if w - p >= 1 then
  local ttl = tonumber(ARGV[10])
  redis.call('ZADD', KEYS[2], ms(now + ttl), ARGV[9] .. ':' .. ARGV[11])
  redis.call('PEXPIRE', KEYS[2], ms(ttl))
  store(tok, last)
  return {0, w - p - 1}
end
if w >= 1 then return {1, 0} end
return ban()
`)

// redisSettle: ARGV 11 is the limiter.Outcome, 12 "1" if a success refills.
var redisSettle = redis.NewScript(redisLib + `
local o = tonumber(ARGV[11])
if o ~= 3 then
  local pre = ARGV[9] .. ':'
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if string.sub(m, 1, #pre) == pre then
      redis.call('ZREM', KEYS[2], m)
      break
    end
  end
end
if o <= 1 then
  if o == 1 and ARGV[12] == '1' then redis.call('DEL', KEYS[1]) end
  return {0, 0}
end
local b = banned()
if b then return b end
local tok, last = tokens()
tok = tok - 1
local p = pending()
local w = whole(tok)
if w >= 1 then
  store(tok, last)
  return {0, math.max(0, w - p)}
end
return ban()
`)

// redisSaveBan writes a ban unless the record holds a later one. KEYS: ban:K,
// index, b:K, p:K. ARGV: until, since, forget, count, reason, K, channel,
// instance.
var redisSaveBan = redis.NewScript(`
local old = redis.call('HGET', KEYS[1], 's')
if old and tonumber(old) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 's', ARGV[2], 'f', ARGV[3], 'c', ARGV[4], 'r', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[7], table.concat({'B', ARGV[8], ARGV[6], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]}, '|'))
return 1
`)

// redisEpoch returns {epoch, 1 if it was just created}. KEYS: epoch; ARGV:
// a new value.
var redisEpoch = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if e then return {e, 0} end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
`)

// redisDeleteBan: KEYS ban:K, index, unban:K; ARGV K, channel, instance,
// tombstone TTL (ms). The tombstone unban:K holds the Since of the ban
// deleted (the server's time if there was none): limiters that missed the
// unban event lift the bans of K made up to then, and only those.
var redisDeleteBan = redis.NewScript(`
local s = redis.call('HGET', KEYS[1], 's')
if not s then
  local t = redis.call('TIME')
  s = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
redis.call('SET', KEYS[3], s, 'PX', ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], table.concat({'U', ARGV[3], ARGV[1]}, '|'))
return 1
`)

// redisUser reads (ARGV 4 = "0") or takes a token from (ARGV 4 = "1") a
// username budget: a token bucket kept as an address budget's is (redisLib's
// tokens and store), without attempts in flight or bans. KEYS: u:H. ARGV:
// 1 now (ms), 2 refill rate (tokens/ms), 3 burst, 4 take. Replies the whole
// tokens left.
var redisUser = redis.NewScript(redisLib + `
local tok, last = tokens()
if ARGV[4] == '1' then
  if tok >= 1 - 1e-6 then tok = tok - 1 else tok, last = 0, now end
  store(tok, last)
end
return whole(tok)
`)
