#!lua name=llorch
-- llama-orch shared task state: one atomic function per StateStore operation
-- (.specs/25-state-store.md, ORCH-2503). Every function takes KEYS[1] = the
-- key prefix "{<tag>}:" so that all keys share one Cluster hash slot.
-- The algorithms mirror llama_orch.core.queue / quota / placement step by step
-- (ORCH-2504): the conformance suite replays the same operations on both
-- backends and compares the serving order.

local LIB_VERSION = '12'
local FIFO_SCORE = 1e15 -- above every deadline (epoch ms): EDF first, then FIFO
local SEQ_OFFSET = 1e14 -- keeps queue members' seq prefix positive and fixed-width

local function now_parts()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s + us / 1e6, s * 1000 + math.floor(us / 1000)
end

-- the decoded rules of the last prefix read, reused while its JSON is unchanged: a
-- cjson.decode per call was a large share of the server's CPU per task (ORCH-2565)
local cfg_raw, cfg_doc = nil, nil
local function config(p)
  local raw = redis.call('GET', p .. 'cfg')
  if not raw then return nil end
  if raw ~= cfg_raw then cfg_raw, cfg_doc = raw, cjson.decode(raw) end
  return cfg_doc
end

local function member_of(seq, tid) return string.format('%015d', seq + SEQ_OFFSET) .. '|' .. tid end
local function tid_of(member) return string.sub(member, 17) end

local function qkey(p, pool, prio, tenant) return p .. 'q:' .. pool .. ':' .. prio .. ':' .. tenant end
local function tweight(cfg, tenant)
  local t = cfg.tenants[tenant]
  if t and t.weight then return math.max(1, t.weight) end
  return 1
end

-- the pool's doorbell (ORCH-2518): dispatchers XREAD BLOCK on it instead of polling
-- the index of running tasks hard preemption walks (ORCH-2606): one ZSET per pool,
-- priority, replica and owner of its running tasks, scored by fencing epoch; kept by
-- every step that starts, stops, moves or claims a run
local function runkey(p, pool, prio, replica, owner)
  return p .. 'run:' .. pool .. ':' .. prio .. ':' .. replica .. ':' .. owner
end

-- the index of queued tasks by admitting instance llorch_unattended reads (ORCH-2612):
-- per pool, a SET of its queued tasks per admitter ('' = none recorded) and a SET of
-- the admitters that may have some (pruned by llorch_unattended when empty); kept by
-- qpush, qremove and pop_head, the only steps that add or remove a queued task
local function admkey(p, pool, adm) return p .. 'qa:' .. pool .. ':' .. adm end

local function ring_bell(p, pool, why)
  redis.call('XADD', p .. 'bell:' .. pool, 'MAXLEN', '~', 100, '*', 'w', why)
end

-- ------------------------------------------------------------------ queue
local function band_live(p, pool, prio) return redis.call('ZCARD', p .. 'arr:' .. pool .. ':' .. prio) end

local function index_queued(p, pool, adm, tid)
  redis.call('SADD', admkey(p, pool, adm), tid)
  redis.call('SADD', p .. 'qadm:' .. pool, adm)
end

-- quiet: the caller rings the bell itself, if at all (llorch_submit_dispatch, ORCH-2569);
-- adm nil: the caller indexes the task itself if it stays queued (ORCH-2616)
local function qpush(p, cfg, pool, prio, tenant, tid, deadline, front, quiet, adm)
  local seq
  if front then seq = redis.call('DECR', p .. 'fseq') else seq = redis.call('INCR', p .. 'aseq') end
  local ring, tcred = p .. 'ring:' .. pool .. ':' .. prio, p .. 'tcred:' .. pool .. ':' .. prio
  if redis.call('HEXISTS', tcred, tenant) == 0 then
    redis.call('HSET', tcred, tenant, tweight(cfg, tenant))
    redis.call('RPUSH', ring, tenant)
  end
  local m = member_of(seq, tid)
  local score = FIFO_SCORE
  if deadline then score = deadline end
  redis.call('ZADD', qkey(p, pool, prio, tenant), score, m)
  redis.call('ZADD', p .. 'arr:' .. pool .. ':' .. prio, seq, tid)
  redis.call('INCR', p .. 'qlen:' .. pool)
  redis.call('HSET', p .. 't:' .. tid, 'state', 'queued', 'member', m)
  if adm then index_queued(p, pool, adm, tid) end
  if not quiet then ring_bell(p, pool, 'queued') end
end

-- remove a queued task from its flow and band (flows retire lazily, as in core)
local function qremove(p, tid)
  local t = redis.call('HMGET', p .. 't:' .. tid, 'pool', 'prio', 'tenant', 'member', 'adm')
  redis.call('ZREM', qkey(p, t[1], t[2], t[3]), t[4])
  redis.call('SREM', admkey(p, t[1], t[5] or ''), tid)
  redis.call('ZREM', p .. 'arr:' .. t[1] .. ':' .. t[2], tid)
  redis.call('DECR', p .. 'qlen:' .. t[1])
end

local function choose_band(p, cfg, pool)
  local prios, pc = cfg.prios, cfg.pools[pool]
  local ready = {}
  for _, prio in ipairs(prios) do
    if band_live(p, pool, prio) > 0 then ready[#ready + 1] = prio end
  end
  if #ready == 0 then return nil, 0 end
  local pcred = p .. 'pcred:' .. pool
  for _, prio in ipairs(ready) do
    if tonumber(redis.call('HGET', pcred, prio)) > 0 then return prio, #ready end
  end
  for _, prio in ipairs(prios) do redis.call('HSET', pcred, prio, pc.weights[prio]) end
  return ready[1], #ready
end

local function head_flow(p, pool, prio)
  local ring, tcred = p .. 'ring:' .. pool .. ':' .. prio, p .. 'tcred:' .. pool .. ':' .. prio
  while true do
    local tenant = redis.call('LINDEX', ring, 0)
    if redis.call('ZCARD', qkey(p, pool, prio, tenant)) > 0 then return tenant end
    redis.call('LPOP', ring)
    redis.call('HDEL', tcred, tenant)
  end
end

local function peek(p, cfg, pool)
  local prio, nready = choose_band(p, cfg, pool)
  if not prio then return nil end
  local tenant = head_flow(p, pool, prio)
  local m = redis.call('ZRANGE', qkey(p, pool, prio, tenant), 0, 0)[1]
  return { tid = tid_of(m), member = m, prio = prio, tenant = tenant, nready = nready }
end

-- pop the head that peek() just returned (core.queue.AdmissionQueue.pop); adm: its
-- admitting instance as its record holds it
local function pop_head(p, cfg, pool, h, adm)
  local prio, tenant = h.prio, h.tenant
  if h.nready > 1 then redis.call('HINCRBY', p .. 'pcred:' .. pool, prio, -1) end
  local q = qkey(p, pool, prio, tenant)
  redis.call('ZREM', q, h.member)
  redis.call('SREM', admkey(p, pool, adm), h.tid)
  redis.call('ZREM', p .. 'arr:' .. pool .. ':' .. prio, h.tid)
  redis.call('DECR', p .. 'qlen:' .. pool)
  local ring, tcred = p .. 'ring:' .. pool .. ':' .. prio, p .. 'tcred:' .. pool .. ':' .. prio
  local credit = redis.call('HINCRBY', tcred, tenant, -1)
  if redis.call('ZCARD', q) == 0 then
    redis.call('LPOP', ring)
    redis.call('HDEL', tcred, tenant)
  elseif credit <= 0 then
    redis.call('HSET', tcred, tenant, tweight(cfg, tenant))
    redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
  end
end

local function victim(p, cfg, pool, prio)
  local pc, prios, rank = cfg.pools[pool], cfg.prios, 0
  for i, x in ipairs(prios) do if x == prio then rank = i end end
  if pc.policy == 'drop-lru' then
    local best, bestseq = nil, nil
    for i = rank, #prios do
      local got = redis.call('ZRANGE', p .. 'arr:' .. pool .. ':' .. prios[i], 0, 0, 'WITHSCORES')
      if got[1] and (best == nil or tonumber(got[2]) < bestseq) then best, bestseq = got[1], tonumber(got[2]) end
    end
    return best, 'QUEUE_FULL_DROP_LRU'
  elseif pc.policy == 'shed-low-priority' then
    for i = #prios, rank + 1, -1 do
      local got = redis.call('ZRANGE', p .. 'arr:' .. pool .. ':' .. prios[i], -1, -1)
      if got[1] then return got[1], 'ADMISSION_REJECT' end
    end
  end
  return nil, nil
end

-- ------------------------------------------------------------------ positions
-- core.queue._turns_before: the items served before the k-th (0-based) item of unit
-- `target` when units ({live, first, weight}) take turns in list order, each serving
-- up to `first` items in the first round and `weight` in every later one.
local function turns_before(k, target, units)
  local first_t, weight_t = units[target][2], units[target][3]
  local rnd = 0
  if k >= first_t then rnd = 1 + math.floor((k - first_t) / weight_t) end
  local before = k
  for i, u in ipairs(units) do
    if i ~= target then
      local rounds = rnd
      if i < target then rounds = rnd + 1 end
      if rounds > 0 then before = before + math.min(u[1], u[2] + (rounds - 1) * u[3]) end
    end
  end
  return before
end

-- core.queue.AdmissionQueue.position (ORCH-2560): the task's place in its flow, then
-- DRR over its band's live flows in ring order, then WRR over the bands; nil when
-- the task is not queued. O(flows + bands) calls.
local function position(p, cfg, tid)
  local t = redis.call('HMGET', p .. 't:' .. tid, 'state', 'pool', 'prio', 'tenant', 'member')
  if t[1] ~= 'queued' then return nil end
  local pool, prio, tenant = t[2], t[3], t[4]
  local k = redis.call('ZRANK', qkey(p, pool, prio, tenant), t[5])
  if not k then return nil end
  local tcred = p .. 'tcred:' .. pool .. ':' .. prio
  local units, target = {}, nil
  for _, ten in ipairs(redis.call('LRANGE', p .. 'ring:' .. pool .. ':' .. prio, 0, -1)) do
    local live = redis.call('ZCARD', qkey(p, pool, prio, ten))
    if live > 0 then
      units[#units + 1] = { live, tonumber(redis.call('HGET', tcred, ten)) or 0, tweight(cfg, ten) }
      if ten == tenant then target = #units end
    end
  end
  if not target then return nil end
  k = turns_before(k, target, units)
  local bands, btarget, pcred = {}, nil, p .. 'pcred:' .. pool
  for i, pr in ipairs(cfg.prios) do
    local live = band_live(p, pool, pr)
    local credit = 0
    if live > 0 then credit = math.max(0, tonumber(redis.call('HGET', pcred, pr)) or 0) end
    bands[i] = { live, credit, cfg.pools[pool].weights[pr] }
    if pr == prio then btarget = i end
  end
  return turns_before(k, btarget, bands)
end

-- ------------------------------------------------------------------ event log / end
local function xadd(p, tid, seq, kind, data)
  redis.call('XADD', p .. 'log:' .. tid, '0-' .. (seq + 1), 'k', kind, 'd', data)
end

-- The one path to a terminal event: free the slot and the quota, drop the lease,
-- log the terminal and start the retention clock (ORCH-2508, ORCH-2517).
local function finish(p, cfg, tid, kind, data)
  local tk = p .. 't:' .. tid
  local t = redis.call('HMGET', tk, 'state', 'pool', 'tenant', 'replica', 'next_seq', 'prio', 'owner')
  if t[1] == 'queued' then
    qremove(p, tid)
  elseif t[1] == 'running' and t[4] then
    redis.call('ZREM', runkey(p, t[2], t[6], t[4], t[7]), tid)
    local b = redis.call('HINCRBY', p .. 'busy:' .. t[2], t[4], -1)
    if b < 0 then redis.call('HSET', p .. 'busy:' .. t[2], t[4], 0) end
    -- a freed slot matters only to a queued task: with none, no dispatcher wakes
    -- for nothing (the next submit rings; ORCH-2570)
    if tonumber(redis.call('GET', p .. 'qlen:' .. t[2]) or '0') > 0 then ring_bell(p, t[2], 'freed') end
  end
  if redis.call('HINCRBY', p .. 'inflight', t[3], -1) < 0 then redis.call('HSET', p .. 'inflight', t[3], 0) end
  redis.call('ZREM', p .. 'leases', tid)
  local seq = tonumber(t[5])
  xadd(p, tid, seq, kind, data)
  redis.call('HSET', tk, 'state', 'ended', 'next_seq', seq + 1)
  redis.call('HDEL', tk, 'lease')
  redis.call('PEXPIRE', tk, cfg.retention_ms)
  redis.call('PEXPIRE', p .. 'log:' .. tid, cfg.retention_ms)
end

-- ------------------------------------------------------------------ functions
local function f_configure(keys, args)
  local p, cfg = keys[1], cjson.decode(args[1])
  redis.call('SET', p .. 'cfg', args[1])
  for pool, pc in pairs(cfg.pools) do
    for _, prio in ipairs(cfg.prios) do redis.call('HSETNX', p .. 'pcred:' .. pool, prio, pc.weights[prio]) end
    -- the queued tasks' index by admitter, rebuilt from the queue (ORCH-2612): tasks
    -- queued under a library before it are then indexed too
    local ak = p .. 'qadm:' .. pool
    for _, adm in ipairs(redis.call('SMEMBERS', ak)) do redis.call('DEL', admkey(p, pool, adm)) end
    redis.call('DEL', ak)
    for _, prio in ipairs(cfg.prios) do
      for _, tid in ipairs(redis.call('ZRANGE', p .. 'arr:' .. pool .. ':' .. prio, 0, -1)) do
        local adm = redis.call('HGET', p .. 't:' .. tid, 'adm') or ''
        redis.call('SADD', admkey(p, pool, adm), tid)
        redis.call('SADD', ak, adm)
      end
    end
  end
  return LIB_VERSION
end

local function bucket(p, key, rps, burst, now)
  local b = redis.call('HMGET', key, 'tok', 'ts')
  local tok, ts = tonumber(b[1]), tonumber(b[2])
  if not tok then tok, ts = burst, now end
  if now > ts then tok = math.min(burst, tok + (now - ts) * rps); ts = now end
  return { key = key, tok = tok, ts = ts, rps = rps, burst = burst }
end

-- args: tid pool prio tenant deadline|'' pin|'' session|'' request displaced_terminal
local function submit_step(p, cfg, args, quiet, admitter, defer_index)
  local tid, pool, prio, tenant = args[1], args[2], args[3], args[4]
  local deadline = tonumber(args[5])
  local tk = p .. 't:' .. tid
  if redis.call('EXISTS', tk) == 1 then return { 'DUP' } end
  local pc = cfg.pools[pool]
  if not pc then return { 'NOPOOL' } end
  -- a drained pool refuses before quotas and capacity are touched (ORCH-2586)
  if redis.call('HEXISTS', p .. 'drains', pool) == 1 then return { 'DRAINING' } end
  local now = now_parts()
  -- quotas (core.quota.Quotas.admit)
  local tc = cfg.tenants[tenant] or cfg.default_tenant
  local inflight = tonumber(redis.call('HGET', p .. 'inflight', tenant) or '0')
  if tc.max_concurrent ~= cjson.null and tc.max_concurrent and inflight >= tc.max_concurrent then
    return { 'QUOTA', '', 'tenant ' .. tenant .. ' has ' .. inflight .. ' tasks in flight (max_concurrent=' .. tc.max_concurrent .. ')' }
  end
  local buckets = {}
  if tc.rps ~= cjson.null and tc.rps then
    local burst = (tc.burst ~= cjson.null and tc.burst) or math.max(1, math.ceil(tc.rps))
    buckets[#buckets + 1] = bucket(p, p .. 'tb:t:' .. tenant, tc.rps, burst, now)
  end
  local pl = cfg.priorities[prio]
  if pl and pl.rps ~= cjson.null and pl.rps then
    local burst = (pl.burst ~= cjson.null and pl.burst) or math.max(1, math.ceil(pl.rps))
    buckets[#buckets + 1] = bucket(p, p .. 'tb:p:' .. prio, pl.rps, burst, now)
  end
  for _, b in ipairs(buckets) do
    redis.call('HSET', b.key, 'tok', string.format('%.17g', b.tok), 'ts', string.format('%.17g', b.ts))
    if b.tok < 1 then
      local wait = math.max(1, math.ceil((1 - b.tok) / b.rps * 1000))
      return { 'QUOTA', tostring(wait), b.key .. ' exceeded its rate' }
    end
  end
  for _, b in ipairs(buckets) do redis.call('HSET', b.key, 'tok', string.format('%.17g', b.tok - 1)) end
  -- capacity and the full policy (core.queue.AdmissionQueue.push)
  local displaced = {}
  if tonumber(redis.call('GET', p .. 'qlen:' .. pool) or '0') >= pc.capacity then
    local v, code = victim(p, cfg, pool, prio)
    if not v then return { 'FULL', pc.policy, 'queue full (' .. pc.capacity .. ' queued)' } end
    finish(p, cfg, v, 'error', cjson.decode(args[9])[code])
    displaced = { v, code }
  end
  redis.call('HSET', tk, 'pool', pool, 'prio', prio, 'tenant', tenant, 'deadline', args[5], 'pin', args[6],
    'session', args[7], 'req', args[8], 'epoch', 0, 'next_seq', 0, 'requeues', 0, 'cancel', 0,
    'adm', admitter or '') -- the admitting instance (ORCH-2603)
  local adm = admitter or ''
  if defer_index then adm = nil end
  qpush(p, cfg, pool, prio, tenant, tid, deadline, false, quiet, adm)
  redis.call('HINCRBY', p .. 'inflight', tenant, 1)
  return { 'OK', position(p, cfg, tid), displaced[1] or '', displaced[2] or '' }
end

-- args: tid pool prio tenant deadline pin session req displaced [admitter]
local function f_submit(keys, args)
  return submit_step(keys[1], config(keys[1]), args, false, args[10])
end

local function free_of(r, busy)
  if not r.ready then return 0 end
  return math.max(0, r.slots - busy)
end

-- core.placement.place; r.load is the work the dispatching instance assigned to the
-- replica (its hint, else 0), and `rr` with `last`: round-robin after the replica that
-- instance picked last (core.placement_policy.round_robin; ORCH-2578)
local function place(views, pin, affinity, rr, last)
  local eligible = {}
  for _, r in ipairs(views) do
    if r.ready and (pin == nil or r.set == pin) then eligible[#eligible + 1] = r end
  end
  if #eligible == 0 then return nil end
  if pin == nil then
    local warm, sets, work, order = nil, {}, {}, {}
    for _, r in ipairs(eligible) do
      if r.id == affinity then warm = r.set end
      if sets[r.set] == nil then sets[r.set] = 0; work[r.set] = 0; order[#order + 1] = r.set end
      sets[r.set] = sets[r.set] + r.free
      work[r.set] = work[r.set] + r.load
    end
    -- core.placement.choose_set: most free slots, the warm set, least work, lowest key
    local key = nil
    for _, k in ipairs(order) do
      if key == nil then key = k
      else
        local a, b = sets[k], sets[key]
        local wk, wkey = (k == warm), (key == warm)
        if a > b or (a == b and ((wk and not wkey) or (wk == wkey and (work[k] < work[key]
          or (work[k] == work[key] and k < key))))) then key = k end
      end
    end
    local kept = {}
    for _, r in ipairs(eligible) do if r.set == key then kept[#kept + 1] = r end end
    eligible = kept
  end
  table.sort(eligible, function(a, b) return a.id < b.id end)
  if rr then
    local first = nil
    for _, r in ipairs(eligible) do
      if r.free > 0 then
        if first == nil then first = r end
        if last ~= nil and r.id > last then return r end
      end
    end
    return first
  end
  local best = nil
  for _, r in ipairs(eligible) do
    if r.free > 0 then
      local wr, wb = false, false
      if best ~= nil then wr, wb = (r.id == affinity), (best.id == affinity) end
      if best == nil or r.free > best.free or (r.free == best.free and ((wr and not wb)
        or (wr == wb and r.load < best.load))) then best = r end
    end
  end
  return best
end

-- the placement hint of llorch_dispatch / llorch_submit_dispatch from args[i]: mode
-- ('' none, 'll' least-loaded, 'rr' round-robin), the replica picked last, then
-- (replica, load) pairs (ORCH-2578)
local function hint_of(args, i)
  local h = { rr = args[i] == 'rr', last = nil, loads = {} }
  if args[i + 1] and args[i + 1] ~= '' then h.last = args[i + 1] end
  for j = i + 2, #args, 2 do h.loads[args[j]] = tonumber(args[j + 1]) end
  return h
end

-- the doorbell's cursor now, taken in the same step as a dispatch that found nothing
-- to place, so the caller waits on it without another round trip (ORCH-2565)
local function bell_cursor(p, pool)
  local last = redis.call('XREVRANGE', p .. 'bell:' .. pool, '+', '-', 'COUNT', 1)
  if last[1] then return last[1][1] end
  return '0-0'
end

-- ------------------------------------------------------------------ placement (ORCH-2572..2577)
-- The Ready replicas of the chosen set with their free slots before the reservation,
-- flat { id, free, ... } by id: the instance's placement policy and hook choose among
-- them and move the reservation with llorch_move when they prefer another (ORCH-2573).
local function candidates_of(views, set)
  local kept = {}
  for _, v in ipairs(views) do
    if v.ready and v.set == set then kept[#kept + 1] = v end
  end
  table.sort(kept, function(a, b) return a.id < b.id end)
  local flat = {}
  for _, v in ipairs(kept) do
    flat[#flat + 1] = v.id
    flat[#flat + 1] = v.free
  end
  return flat
end

-- args: pool instance lease_ms orphan_terminal [hint: mode last (replica load)...]
local function dispatch_step(p, cfg, pool, instance, lease_ms, orphan, hint)
  -- a drained pool starts nothing (ORCH-2586)
  if redis.call('HEXISTS', p .. 'drains', pool) == 1 then return { 'WAIT', bell_cursor(p, pool) } end
  local head = peek(p, cfg, pool)
  if not head then return { 'EMPTY', bell_cursor(p, pool) } end
  local tid = head.tid
  local tk = p .. 't:' .. tid
  local t = redis.call('HMGET', tk, 'pin', 'session', 'prio', 'tenant', 'deadline', 'req', 'requeues', 'next_seq',
    'adm')
  local pin, affinity = nil, nil
  if t[1] ~= '' then pin = t[1] end
  local sk = nil
  if t[2] ~= '' then
    sk = p .. 'sess:' .. t[2]
    local s = redis.call('HMGET', sk, 'set', 'replica')
    if s[1] then
      if pin == nil then pin = s[1] end
      affinity = s[2]
    end
  end
  local raw = redis.call('HGETALL', p .. 'rep:' .. pool)
  local busy = p .. 'busy:' .. pool
  local used, braw = {}, redis.call('HGETALL', busy)
  for i = 1, #braw, 2 do used[braw[i]] = tonumber(braw[i + 1]) end
  local views, any_ready_pinned = {}, false
  for i = 1, #raw, 2 do
    local v = cjson.decode(raw[i + 1])
    local r = { id = raw[i], set = v[1], ready = v[2], slots = v[3], load = hint.loads[raw[i]] or 0 }
    r.free = free_of(r, used[r.id] or 0)
    views[#views + 1] = r
    if r.ready and r.set == pin then any_ready_pinned = true end
  end
  if pin ~= nil and not any_ready_pinned then
    pop_head(p, cfg, pool, head, t[9] or '')
    redis.call('HSET', tk, 'state', 'orphaned')
    finish(p, cfg, tid, 'error', orphan)
    return { 'ORPHAN', tid }
  end
  local r = place(views, pin, affinity, hint.rr, hint.last)
  if r == nil then return { 'WAIT', bell_cursor(p, pool) } end
  pop_head(p, cfg, pool, head, t[9] or '')
  local _, now_ms = now_parts()
  local epoch = redis.call('INCR', p .. 'epoch')
  redis.call('HSET', tk, 'state', 'running', 'epoch', epoch, 'owner', instance, 'replica', r.id, 'set', r.set,
    'lease', now_ms + lease_ms, 'dseq', t[8])
  redis.call('ZADD', p .. 'leases', now_ms + lease_ms, tid)
  redis.call('ZADD', runkey(p, pool, t[3], r.id, instance), epoch, tid)
  redis.call('HINCRBY', busy, r.id, 1)
  if sk then
    redis.call('HSET', sk, 'set', r.set, 'replica', r.id)
    redis.call('PEXPIRE', sk, cfg.session_ttl_ms)
  end
  -- the log's next seq: the first event the new owner appends gets it (ORCH-2571);
  -- then what the instance's placement policy chooses among (ORCH-2573)
  return { 'OK', tid, r.id, r.set, epoch, t[3], t[4], t[5], t[1], t[2], t[6], tonumber(t[7]), tonumber(t[8]),
    candidates_of(views, r.set), affinity or '' }
end

local function f_dispatch(keys, args)
  return dispatch_step(keys[1], config(keys[1]), args[1], args[2], tonumber(args[3]), args[4], hint_of(args, 5))
end

-- args: the 9 of llorch_submit, then instance lease_ms orphan_terminal (ORCH-2569),
-- then the placement hint as llorch_dispatch's (ORCH-2578).
-- Admit, then dispatch the pool's head to this instance, in one step: the same answers
-- as llorch_submit followed by llorch_dispatch. The doorbell rings unless the task
-- just admitted was the one dispatched (nothing new is then left queued for others).
local function f_submit_dispatch(keys, args)
  local p = keys[1]
  local cfg = config(p)
  local admitted = submit_step(p, cfg, args, true, args[10], true) -- the instance admits
  if admitted[1] ~= 'OK' then return { admitted } end
  local d = dispatch_step(p, cfg, args[2], args[10], tonumber(args[11]), args[12], hint_of(args, 13))
  if d[2] ~= args[1] or (d[1] ~= 'OK' and d[1] ~= 'ORPHAN') then
    -- the task stays queued: indexed now (ORCH-2616); one dispatched or ended at once
    -- never was, and pop_head's SREM of it is a no-op
    index_queued(p, args[2], args[10] or '', args[1])
    ring_bell(p, args[2], 'queued')
  end
  return { admitted, d }
end

local function owned(p, tid, epoch)
  local t = redis.call('HMGET', p .. 't:' .. tid, 'state', 'epoch', 'cancel', 'next_seq')
  if not t[1] then return 'NOTASK' end
  if t[1] == 'ended' then
    if t[3] == '1' then return 'CANCELED' end
    return 'ENDED'
  end
  if t[1] ~= 'running' or tonumber(t[2]) ~= epoch then return 'FENCED' end
  return nil, tonumber(t[4])
end

-- args: tid epoch kind1 data1 [kind2 data2 ...]; a terminal only as the last event
-- one task's batch: args[i0] = tid, args[i0 + 1] = epoch, then n (kind, data) pairs
local function append_one(p, args, i0, n)
  local tid = args[i0]
  local err, seq = owned(p, tid, tonumber(args[i0 + 1]))
  if err then return { err } end
  for i = 1, n - 1 do
    local kind = args[i0 + 2 * i]
    if kind == 'end' or kind == 'error' then return { 'BADBATCH' } end
  end
  for i = 1, n do
    local kind, data = args[i0 + 2 * i], args[i0 + 1 + 2 * i]
    if kind == 'end' or kind == 'error' then
      redis.call('HSET', p .. 't:' .. tid, 'next_seq', seq)
      finish(p, config(p), tid, kind, data)
      return { 'OK', seq + 1 }
    end
    xadd(p, tid, seq, kind, data)
    seq = seq + 1
  end
  redis.call('HSET', p .. 't:' .. tid, 'next_seq', seq)
  return { 'OK', seq }
end

-- args: tid epoch kind1 data1 [kind2 data2 ...]; a terminal only as the last event
local function f_append(keys, args)
  return append_one(keys[1], args, 1, (#args - 2) / 2)
end

-- args: (tid epoch n kind1 data1 ... kindn datan) repeated: the batches of several
-- tasks in one call (ORCH-2565); one answer per batch, as llorch_append's
local function f_append_many(keys, args)
  local out, i = {}, 1
  while i <= #args do
    local n = tonumber(args[i + 2])
    -- shift tid and epoch over n: append_one reads them at i0 and i0 + 1, pairs after
    args[i + 2] = args[i + 1]
    args[i + 1] = args[i]
    out[#out + 1] = append_one(keys[1], args, i + 1, n)
    i = i + 3 + 2 * n
  end
  return out
end

-- args: tid terminal_kind terminal_data
local function f_cancel(keys, args)
  local p = keys[1]
  if args[4] == 'count' then
    -- the default terminal: its tokens_out is the tokens the log holds, counted in
    -- this same step (no append can come between the count and the end)
    local n = 0
    for _, e in ipairs(redis.call('XRANGE', p .. 'log:' .. args[1], '-', '+')) do
      if e[2][2] == 'token' then n = n + 1 end
    end
    local ev = cjson.decode(args[3])
    ev.tokens_out = n
    args[3] = cjson.encode(ev)
  end
  local tk = p .. 't:' .. args[1]
  local state = redis.call('HGET', tk, 'state')
  if not state then return { 'NOTASK' } end
  if state == 'ended' then return { 'OK', 'ended' } end
  local owner = redis.call('HGET', tk, 'owner')
  redis.call('HSET', tk, 'cancel', 1)
  local cfg = config(p)
  finish(p, cfg, args[1], args[2], args[3])
  if state == 'running' and owner then
    -- the owner's control channel (ORCH-2540): it aborts the engine stream at once
    local ck = p .. 'ctl:' .. owner
    redis.call('XADD', ck, 'MAXLEN', '~', 1000, '*', 'op', 'cancel', 't', args[1])
    redis.call('PEXPIRE', ck, cfg.retention_ms)
  end
  return { 'OK', state }
end

-- args: instance ttl_ms (ORCH-2543): the instance is alive until now + ttl
local function f_heartbeat(keys, args)
  local p = keys[1]
  local _, now_ms = now_parts()
  redis.call('ZADD', p .. 'inst', now_ms + tonumber(args[2]), args[1])
  redis.call('ZREMRANGEBYSCORE', p .. 'inst', '-inf', now_ms)
  return 'OK'
end

-- returns { instance, ms_left, ... } of the live instances
local function f_instances(keys, args)
  local p = keys[1]
  local _, now_ms = now_parts()
  local out = {}
  local live = redis.call('ZRANGEBYSCORE', p .. 'inst', '(' .. now_ms, '+inf', 'WITHSCORES')
  for i = 1, #live, 2 do
    out[#out + 1] = live[i]
    out[#out + 1] = tonumber(live[i + 1]) - now_ms
  end
  return out
end

local function back_to_queue(p, cfg, tid)
  local tk = p .. 't:' .. tid
  local t = redis.call('HMGET', tk, 'pool', 'prio', 'tenant', 'deadline', 'replica', 'owner', 'adm')
  if t[5] then
    redis.call('ZREM', runkey(p, t[1], t[2], t[5], t[6]), tid)
    local b = redis.call('HINCRBY', p .. 'busy:' .. t[1], t[5], -1)
    if b < 0 then redis.call('HSET', p .. 'busy:' .. t[1], t[5], 0) end
  end
  local epoch = redis.call('INCR', p .. 'epoch')
  redis.call('HDEL', tk, 'owner', 'replica', 'set', 'lease')
  redis.call('HSET', tk, 'epoch', epoch)
  redis.call('HINCRBY', tk, 'requeues', 1)
  redis.call('ZREM', p .. 'leases', tid)
  qpush(p, cfg, t[1], t[2], t[3], tid, tonumber(t[4]), true, false, t[7] or '')
  return epoch
end

local function f_requeue(keys, args)
  local p = keys[1]
  local err, seq = owned(p, args[1], tonumber(args[2]))
  if err then return { err } end
  -- it streamed since its dispatch (a preemption): its continuation must come from
  -- the same replica set, so it is pinned there (ORCH-1902, ORCH-2580)
  local tk = p .. 't:' .. args[1]
  local t = redis.call('HMGET', tk, 'dseq', 'pin', 'set')
  if seq > tonumber(t[1] or '0') and (t[2] or '') == '' and t[3] then redis.call('HSET', tk, 'pin', t[3]) end
  back_to_queue(p, config(p), args[1])
  return { 'OK' }
end

-- args: instance lease_ms tid1 epoch1 ...; returns the ids this instance lost
local function f_renew(keys, args)
  local p = keys[1]
  local _, now_ms = now_parts()
  local lost = {}
  for i = 3, #args, 2 do
    local tid, tk = args[i], p .. 't:' .. args[i]
    local t = redis.call('HMGET', tk, 'state', 'epoch', 'owner')
    if t[1] == 'running' and tonumber(t[2]) == tonumber(args[i + 1]) and t[3] == args[1] then
      redis.call('ZADD', p .. 'leases', now_ms + tonumber(args[2]), tid)
      redis.call('HSET', tk, 'lease', now_ms + tonumber(args[2]))
    else
      lost[#lost + 1] = tid
    end
  end
  return lost
end

-- args: instance lease_ms max_requeues
local function f_reap(keys, args)
  local p = keys[1]
  local cfg = config(p)
  local _, now_ms = now_parts()
  local out = {}
  for _, tid in ipairs(redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now_ms)) do
    local tk = p .. 't:' .. tid
    local t = redis.call('HMGET', tk, 'next_seq', 'requeues', 'replica', 'dseq', 'pool', 'prio', 'owner')
    local outcome, epoch
    -- no event since its dispatch (`queued` events before it do not count)
    if tonumber(t[1]) == tonumber(t[4] or '0') and tonumber(t[2]) < tonumber(args[3]) then
      outcome, epoch = 'requeued', back_to_queue(p, cfg, tid)
      t[3] = false
    else
      outcome, epoch = 'claimed', redis.call('INCR', p .. 'epoch')
      redis.call('HSET', tk, 'epoch', epoch, 'owner', args[1], 'lease', now_ms + tonumber(args[2]))
      redis.call('ZADD', p .. 'leases', now_ms + tonumber(args[2]), tid)
      redis.call('ZREM', runkey(p, t[5], t[6], t[3], t[7]), tid)
      redis.call('ZADD', runkey(p, t[5], t[6], t[3], args[1]), epoch, tid)
    end
    out[#out + 1] = { tid, outcome, epoch, tonumber(t[1]), t[3] or '' }
  end
  return out
end

-- args: pool; then replica set_key ready(0/1) slots, repeated
local function f_set_replicas(keys, args)
  local p = keys[1]
  local rk = p .. 'rep:' .. args[1]
  redis.call('DEL', rk)
  for i = 2, #args, 4 do
    redis.call('HSET', rk, args[i], cjson.encode({ args[i + 1], args[i + 2] == '1', tonumber(args[i + 3]) }))
  end
  ring_bell(p, args[1], 'replicas')
  return 'OK'
end

-- args: tid epoch replica (ORCH-2574): move a running task's reservation to another
-- Ready replica of its set with a free slot, before its first event since the
-- dispatch; { 'OK', 1 } moved (or already there), { 'OK', 0 } nothing changed, or
-- the refusal of owned() (FENCED, ENDED, CANCELED, NOTASK). Epoch, lease, owner stay.
local function f_move(keys, args)
  local p, tid, to = keys[1], args[1], args[3]
  local err, seq = owned(p, tid, tonumber(args[2]))
  if err then return { err } end
  local tk = p .. 't:' .. tid
  local t = redis.call('HMGET', tk, 'pool', 'replica', 'set', 'dseq', 'session', 'prio', 'owner')
  if not t[2] or tonumber(t[4] or '-1') ~= seq then return { 'OK', 0 } end
  local raw = redis.call('HGET', p .. 'rep:' .. t[1], to)
  if not raw then return { 'OK', 0 } end
  local v = cjson.decode(raw)
  if not v[2] or v[1] ~= t[3] then return { 'OK', 0 } end
  if to == t[2] then return { 'OK', 1 } end
  local busy = p .. 'busy:' .. t[1]
  if tonumber(redis.call('HGET', busy, to) or '0') >= v[3] then return { 'OK', 0 } end
  if redis.call('HINCRBY', busy, t[2], -1) < 0 then redis.call('HSET', busy, t[2], 0) end
  redis.call('HINCRBY', busy, to, 1)
  redis.call('HSET', tk, 'replica', to)
  redis.call('ZREM', runkey(p, t[1], t[6], t[2], t[7]), tid)
  redis.call('ZADD', runkey(p, t[1], t[6], to, t[7]), tonumber(args[2]), tid)
  if t[5] and t[5] ~= '' then
    local sk = p .. 'sess:' .. t[5]
    if redis.call('EXISTS', sk) == 1 then redis.call('HSET', sk, 'replica', to) end
  end
  -- the freed slot may serve a queued task (ORCH-2570)
  if tonumber(redis.call('GET', p .. 'qlen:' .. t[1]) or '0') > 0 then ring_bell(p, t[1], 'freed') end
  return { 'OK', 1 }
end

-- ------------------------------------------------------------------ hard preemption (ORCH-2579)
-- args: pool. The priority and pinned set (its pin, else its session's set) of the task
-- a dispatch would take next; {} when none is queued. Peeking may reset the band
-- credits and drop empty flows from a ring, as the next dispatch would anyway.
local function f_head(keys, args)
  local p = keys[1]
  local h = peek(p, config(p), args[1])
  if not h then return {} end
  local t = redis.call('HMGET', p .. 't:' .. h.tid, 'pin', 'session')
  local pin = t[1] or ''
  if pin == '' and t[2] and t[2] ~= '' then
    pin = redis.call('HGET', p .. 'sess:' .. t[2], 'set') or ''
  end
  return { h.prio, pin }
end

-- the newest run (highest epoch) of one index key on the pinned set ('' = any), or nil;
-- a run's set is the one its replica had at its dispatch, so only a re-keyed replica's
-- older runs are walked past
local function newest_run(p, key, pin)
  local i = 0
  while true do
    local got = redis.call('ZREVRANGE', key, i, i + 7, 'WITHSCORES')
    if #got == 0 then return nil end
    for j = 1, #got, 2 do
      if pin == '' or redis.call('HGET', p .. 't:' .. got[j], 'set') == pin then
        return got[j], tonumber(got[j + 1])
      end
    end
    i = i + 8
  end
end

-- args: pool instance ttl_ms replica... (ORCH-2597). The run to interrupt for the
-- head: a running task of the pool with a strictly lower priority, on one of the
-- named replicas (Ready and interruptible, as the caller knows them) and on the
-- head's pinned set when it has one, owned by the caller or by a live instance
-- (`inst`); the caller's own with the highest epoch, else anyone's. The choice is
-- recorded for the head in `pre:<pool>` (PX ttl_ms): while it lasts the same head
-- gets no second victim. The owner, when not the caller, is told on its channel.
-- Returns { task, owner } or {}. Only the index keys of the lower priorities, the
-- named replicas and the caller and live instances are read, each from its newest
-- run (ORCH-2606): no running task of another pool, priority, replica or a gone
-- owner is visited.
local function f_preempt(keys, args)
  local p, pool, instance = keys[1], args[1], args[2]
  local cfg = config(p)
  local h = peek(p, cfg, pool)
  if not h then return {} end
  local mk = p .. 'pre:' .. pool
  if redis.call('GET', mk) == h.tid then return {} end
  local lower, below = {}, false
  for _, prio in ipairs(cfg.prios) do
    if below then lower[#lower + 1] = prio end
    if prio == h.prio then below = true end
  end
  if #lower == 0 then return {} end
  local t = redis.call('HMGET', p .. 't:' .. h.tid, 'pin', 'session')
  local pin = t[1] or ''
  if pin == '' and t[2] and t[2] ~= '' then
    pin = redis.call('HGET', p .. 'sess:' .. t[2], 'set') or ''
  end
  local _, now_ms = now_parts()
  local owners = { instance } -- the caller first, whether live or not; then the live
  for _, o in ipairs(redis.call('ZRANGEBYSCORE', p .. 'inst', '(' .. now_ms, '+inf')) do
    if o ~= instance then owners[#owners + 1] = o end
  end
  local best, best_epoch, best_owner = nil, -1, nil
  for _, owner in ipairs(owners) do
    for _, prio in ipairs(lower) do
      for i = 4, #args do
        local tid, epoch = newest_run(p, runkey(p, pool, prio, args[i], owner), pin)
        if tid and epoch > best_epoch then best, best_epoch, best_owner = tid, epoch, owner end
      end
    end
    if best and owner == instance then break end -- the caller's own run before any other's
  end
  if not best then return {} end
  redis.call('SET', mk, h.tid, 'PX', math.max(1, tonumber(args[3])))
  if best_owner ~= instance then
    local ck = p .. 'ctl:' .. best_owner
    redis.call('XADD', ck, 'MAXLEN', '~', 1000, '*', 'op', 'preempt', 't', best, 'p', pool)
    redis.call('PEXPIRE', ck, cfg.retention_ms)
  end
  return { best, best_owner }
end

-- args: tid. An admission whose durability the store did not confirm in time
-- (ORCH-2551): the task is taken back as if it had never been accepted. Queued:
-- out of its queue; already dispatched during the wait: its slot and lease back and
-- its owner told on its control channel; either way its quota is released and its
-- record and log are deleted, so the client may submit the same task_id again.
local function f_withdraw(keys, args)
  local p, tid = keys[1], args[1]
  local tk = p .. 't:' .. tid
  local t = redis.call('HMGET', tk, 'state', 'pool', 'tenant', 'replica', 'owner', 'prio')
  if not t[1] then return { 'NOTASK' } end
  if t[1] ~= 'ended' then
    if t[1] == 'queued' then
      qremove(p, tid)
    elseif t[1] == 'running' then
      if t[4] then
        redis.call('ZREM', runkey(p, t[2], t[6], t[4], t[5]), tid)
        local b = redis.call('HINCRBY', p .. 'busy:' .. t[2], t[4], -1)
        if b < 0 then redis.call('HSET', p .. 'busy:' .. t[2], t[4], 0) end
        ring_bell(p, t[2], 'freed')
      end
      if t[5] then
        local ck = p .. 'ctl:' .. t[5]
        redis.call('XADD', ck, 'MAXLEN', '~', 1000, '*', 'op', 'cancel', 't', tid)
        redis.call('PEXPIRE', ck, config(p).retention_ms)
      end
    end
    if redis.call('HINCRBY', p .. 'inflight', t[3], -1) < 0 then redis.call('HSET', p .. 'inflight', t[3], 0) end
    redis.call('ZREM', p .. 'leases', tid)
  end
  redis.call('DEL', tk, p .. 'log:' .. tid)
  return { 'OK', t[1] }
end

-- args: tid1 tid2 ...; returns { tid, position, ... } of those queued (ORCH-2560)
local function f_positions(keys, args)
  local p = keys[1]
  local cfg = config(p)
  local out = {}
  for _, tid in ipairs(args) do
    local pos = position(p, cfg, tid)
    if pos then out[#out + 1] = tid; out[#out + 1] = pos end
  end
  return out
end

-- args: interval_ms queued_json_format tid1 eta1 ...: for each task still queued its
-- position, and a `queued` event when the last one is 0.95 interval old (server
-- clock) and the position changed or the ETA moved by > max(500 ms, 10 %)
-- (state_store.queued_note_due, ORCH-2561). No epoch: the step appends only while
-- the task is queued, so no `queued` event can follow its dispatch or its end.
local function f_announce(keys, args)
  local p = keys[1]
  local cfg = config(p)
  local _, now_ms = now_parts()
  local interval, fmt = tonumber(args[1]), args[2]
  local out = {}
  for i = 3, #args, 2 do
    local tid, eta = args[i], tonumber(args[i + 1])
    local pos = position(p, cfg, tid)
    if pos then
      out[#out + 1] = tid
      out[#out + 1] = pos
      local tk = p .. 't:' .. tid
      local q = redis.call('HMGET', tk, 'qpos', 'qeta', 'qat', 'next_seq')
      local due = true
      if q[1] then
        local lpos, leta, lat = tonumber(q[1]), tonumber(q[2]), tonumber(q[3])
        if now_ms - lat < interval * 0.95 then
          due = false
        elseif lpos == pos and math.abs(leta - eta) <= math.max(500, 0.1 * leta) then
          due = false
        end
      end
      if due then
        local seq = tonumber(q[4])
        xadd(p, tid, seq, 'queued', string.format(fmt, pos, eta))
        redis.call('HSET', tk, 'next_seq', seq + 1, 'qpos', pos, 'qeta', eta, 'qat', now_ms)
      end
    end
  end
  return out
end

-- args: tid kind data: end a task that is still queued (a bounded wait ran out,
-- ORCH-2562); 0 when it is not queued any more (nothing changes)
local function f_expire(keys, args)
  local p, tid = keys[1], args[1]
  if redis.call('HGET', p .. 't:' .. tid, 'state') ~= 'queued' then return 0 end
  finish(p, config(p), tid, args[2], args[3])
  return 1
end

-- ------------------------------------------------------------------ pool drains
-- (ORCH-2585..2587) `drains` HASH: pool -> the drain's deadline (server epoch ms)

-- op on the control channel of every live instance (ORCH-2543's `inst`)
local function broadcast(p, cfg, op, pool, now_ms)
  for _, inst in ipairs(redis.call('ZRANGEBYSCORE', p .. 'inst', '(' .. now_ms, '+inf')) do
    local ck = p .. 'ctl:' .. inst
    redis.call('XADD', ck, 'MAXLEN', '~', 1000, '*', 'op', op, 't', '', 'p', pool)
    redis.call('PEXPIRE', ck, cfg.retention_ms)
  end
end

-- args: pool deadline_ms; returns { the ms left to the drain's deadline (the first
-- one's), then the ids of the pool's tasks queued or running now, sorted (ORCH-2609) }
local function f_drain_pool(keys, args)
  local p, pool = keys[1], args[1]
  local cfg = config(p)
  local _, now_ms = now_parts()
  local at = tonumber(redis.call('HGET', p .. 'drains', pool))
  if not at then
    at = now_ms + tonumber(args[2])
    redis.call('HSET', p .. 'drains', pool, at)
    broadcast(p, cfg, 'drain', pool, now_ms)
  end
  local ids = {}
  for _, prio in ipairs(cfg.prios) do
    for _, tid in ipairs(redis.call('ZRANGE', p .. 'arr:' .. pool .. ':' .. prio, 0, -1)) do
      ids[#ids + 1] = tid
    end
  end
  for _, tid in ipairs(redis.call('ZRANGE', p .. 'leases', 0, -1)) do
    if redis.call('HGET', p .. 't:' .. tid, 'pool') == pool then ids[#ids + 1] = tid end
  end
  table.sort(ids)
  table.insert(ids, 1, math.max(0, at - now_ms))
  return ids
end

-- args: pool; 1 when it was drained (then every live instance is told), else 0
local function f_undrain_pool(keys, args)
  local p, pool = keys[1], args[1]
  if redis.call('HDEL', p .. 'drains', pool) == 0 then return 0 end
  local _, now_ms = now_parts()
  broadcast(p, config(p), 'undrain', pool, now_ms)
  ring_bell(p, pool, 'undrained')
  return 1
end

-- returns { pool, ms_left, ... } of every drained pool
local function f_drains(keys, args)
  local p = keys[1]
  local _, now_ms = now_parts()
  local raw, out = redis.call('HGETALL', p .. 'drains'), {}
  for i = 1, #raw, 2 do
    out[#out + 1] = raw[i]
    out[#out + 1] = math.max(0, tonumber(raw[i + 1]) - now_ms)
  end
  return out
end

-- args: pool: the ids of every task queued in the pool, sorted (ORCH-2600)
local function f_queued(keys, args)
  local p, pool = keys[1], args[1]
  local ids = {}
  for _, prio in ipairs(config(p).prios) do
    for _, tid in ipairs(redis.call('ZRANGE', p .. 'arr:' .. pool .. ':' .. prio, 0, -1)) do
      ids[#ids + 1] = tid
    end
  end
  table.sort(ids)
  return ids
end

-- args: pool. The ids of the tasks queued in the pool whose admitting instance is not
-- live (none recorded, or its heartbeat in `inst` expired), sorted (ORCH-2603). Reads
-- the index by admitter (ORCH-2612): one ZSCORE per admitter with queued tasks, then
-- the tasks of those not live; an admitter not live with none left is pruned.
local function f_unattended(keys, args)
  local p, pool = keys[1], args[1]
  local _, now_ms = now_parts()
  local ak, ids = p .. 'qadm:' .. pool, {}
  for _, adm in ipairs(redis.call('SMEMBERS', ak)) do
    if adm == '' or tonumber(redis.call('ZSCORE', p .. 'inst', adm) or '0') <= now_ms then
      local got = redis.call('SMEMBERS', admkey(p, pool, adm))
      if #got == 0 then redis.call('SREM', ak, adm) end
      for _, tid in ipairs(got) do ids[#ids + 1] = tid end
    end
  end
  table.sort(ids)
  return ids
end

-- args: pool kind data: end every task still queued in the pool (ORCH-2587); their ids
local function f_end_queued(keys, args)
  local p, pool = keys[1], args[1]
  local cfg = config(p)
  local ended = {}
  for _, prio in ipairs(cfg.prios) do
    for _, tid in ipairs(redis.call('ZRANGE', p .. 'arr:' .. pool .. ':' .. prio, 0, -1)) do
      finish(p, cfg, tid, args[2], args[3])
      ended[#ended + 1] = tid
    end
  end
  table.sort(ended)
  return ended
end

redis.register_function('llorch_version', function() return LIB_VERSION end)
redis.register_function('llorch_configure', f_configure)
redis.register_function('llorch_set_replicas', f_set_replicas)
redis.register_function('llorch_submit', f_submit)
redis.register_function('llorch_dispatch', f_dispatch)
redis.register_function('llorch_submit_dispatch', f_submit_dispatch)
redis.register_function('llorch_append', f_append)
redis.register_function('llorch_append_many', f_append_many)
redis.register_function('llorch_cancel', f_cancel)
redis.register_function('llorch_requeue', f_requeue)
redis.register_function('llorch_renew', f_renew)
redis.register_function('llorch_reap', f_reap)
redis.register_function('llorch_heartbeat', f_heartbeat)
redis.register_function('llorch_instances', f_instances)
redis.register_function('llorch_withdraw', f_withdraw)
redis.register_function('llorch_positions', f_positions)
redis.register_function('llorch_announce', f_announce)
redis.register_function('llorch_expire', f_expire)
redis.register_function('llorch_move', f_move)
redis.register_function('llorch_head', f_head)
redis.register_function('llorch_preempt', f_preempt)
redis.register_function('llorch_drain_pool', f_drain_pool)
redis.register_function('llorch_undrain_pool', f_undrain_pool)
redis.register_function('llorch_drains', f_drains)
redis.register_function('llorch_end_queued', f_end_queued)
redis.register_function('llorch_queued', f_queued)
redis.register_function('llorch_unattended', f_unattended)
