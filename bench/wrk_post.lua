-- wrk script of bench/serve.py: POSTs the JSON bodies of a file (one per line) in
-- turn, and prints the figures as one JSON line.
--   wrk -t1 -c32 -d5s -s bench/wrk_post.lua URL -- BODIES_FILE [FIRST_LINE]
local bodies = {}
local next_body = 1

function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  next_body = (tonumber(args[2]) or 0) % #bodies + 1
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "mean_us": %f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    e.status, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean))
end
