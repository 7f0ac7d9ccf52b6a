-- wrk script for bench/serve.py: signed CDS Hooks calls with real prefetch, one fresh token per call.
-- args: <threads> <folder> <path>. The folder holds pre.txt and post.txt (each request body split around its
-- hookInstance, one line per stay) and tokens.txt (pre-signed JWTs, one per line, each used once; thread k takes
-- lines k, k + threads, ...). done() prints one JSON line: latency percentiles (microseconds), counts, answers.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  nthreads = tonumber(args[1])
  local dir = args[2]
  path = args[3]
  pres, posts, toks = {}, {}, {}
  for line in io.lines(dir .. "/pre.txt") do pres[#pres + 1] = line end
  for line in io.lines(dir .. "/post.txt") do posts[#posts + 1] = line end
  local i = 0
  for line in io.lines(dir .. "/tokens.txt") do
    if i % nthreads == id then toks[#toks + 1] = line end
    i = i + 1
  end
  math.randomseed(id + 1)
  sent, warning, info, empty, bad, other, wrapped = 0, 0, 0, 0, 0, 0, 0
end

function request()
  sent = sent + 1
  if sent > #toks then wrapped = wrapped + 1 end
  local tok = toks[((sent - 1) % #toks) + 1]
  local k = math.random(#pres)
  local hook = string.format("%08x-0000-4000-8000-%012x", id, sent)
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. tok, ["Content-Type"] = "application/json"},
                    pres[k] .. hook .. posts[k])
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  elseif body == '{"cards":[]}' then
    empty = empty + 1
  elseif body:find('"indicator":"warning"', 1, true) then
    warning = warning + 1
  elseif body:find('"indicator":"info"', 1, true) then
    info = info + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local t = {warning = 0, info = 0, empty = 0, bad = 0, other = 0, sent = 0, wrapped = 0}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"warning":%d,"info":%d,"empty":%d,"bad":%d,' ..
    '"other":%d,"sent":%d,"tokens_reused":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean, e.status, e.connect, e.read, e.write, e.timeout, t.warning, t.info, t.empty, t.bad,
    t.other, t.sent, t.wrapped))
end
