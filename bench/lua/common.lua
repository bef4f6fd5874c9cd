-- Shared by the scenario scripts (loaded with dofile from BENCH_LUA_DIR): headers, token files, and a done()
-- that prints one machine-readable line for bench/run.py.
local M = {}

-- The bench speaks plain http to 127.0.0.1 as the TLS proxy in front of the server would.
function M.headers()
  wrk.headers["Host"] = os.getenv("BENCH_HOST") or "localhost"
  wrk.headers["X-Forwarded-Proto"] = "https"
  wrk.headers["User-Agent"] = "idp-bench/wrk"
  local basic = os.getenv("BENCH_BASIC")
  if basic and basic ~= "" then wrk.headers["Authorization"] = "Basic " .. basic end
end

-- Lines of a file (tokens), or only those that belong to one thread of n (1-based id).
function M.lines(path, id, n)
  local out, i = {}, 0
  for line in io.lines(path) do
    if line ~= "" then
      if not id or (i % n) + 1 == id then out[#out + 1] = line end
      i = i + 1
    end
  end
  return out
end

-- The first failed response of each thread goes to stderr (bench/run.py shows it), to tell why it failed. A
-- scenario may also pass accepted(body): a success status whose body it refuses (an introspection answer that
-- is not active, say) is counted in the thread's global `rejected` and reported as errors_rejected.
local reported = false
rejected = 0
function M.check(status, headers, body, accepted)
  local failed = status >= 400
  if not failed and accepted and not accepted(body or "") then
    failed = true
    rejected = rejected + 1
  end
  if failed and not reported then
    reported = true
    io.stderr:write("BENCH_FIRST_ERROR " .. status .. " " .. string.sub(body or "", 1, 300) .. "\n")
  end
end

-- setup() numbers the threads so that init() can pick its own share of a token file, and keeps them for done().
local counter, threads = 0, {}
function M.setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
  threads[#threads + 1] = thread
end

function M.done(summary, latency, requests)
  local e, refused = summary.errors, 0
  for _, thread in ipairs(threads) do refused = refused + (thread:get("rejected") or 0) end
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors_status": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_timeout": %d, ' ..
    '"errors_rejected": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.status, e.connect, e.read, e.write, e.timeout, refused))
end

-- Install wrk's callbacks for a scenario that cycles over the pre-issued tokens in BENCH_TOKENS, one request per
-- token built by make_request(token); accepted(body), if given, as for M.check.
function M.cycle_tokens(make_request, accepted)
  local tokens, i = nil, 0
  setup = M.setup
  init = function(args)
    tokens = M.lines(os.getenv("BENCH_TOKENS"))
    i = thread_id or 0
  end
  request = function()
    i = i % #tokens + 1
    return make_request(tokens[i])
  end
  response = function(status, headers, body) M.check(status, headers, body, accepted) end
  done = M.done
end

return M
