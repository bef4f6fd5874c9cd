-- GET the UserInfo endpoint with a bearer token, cycling over pre-issued access tokens (BENCH_TOKENS).
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.headers["Authorization"] = nil
local tokens, i = nil, 0
setup = c.setup
function init(args)
  tokens = c.lines(os.getenv("BENCH_TOKENS"))
  i = thread_id or 0
end
function request()
  i = i % #tokens + 1
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[i]}, nil)
end
response = c.check
done = c.done
