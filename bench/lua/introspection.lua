-- POST the introspection endpoint with the client's credentials, cycling over pre-issued tokens (BENCH_TOKENS).
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local hint = os.getenv("BENCH_TOKEN_HINT") or "access_token"
local tokens, i = nil, 0
setup = c.setup
function init(args)
  tokens = c.lines(os.getenv("BENCH_TOKENS"))
  i = thread_id or 0
end
function request()
  i = i % #tokens + 1
  return wrk.format("POST", nil, nil, "token=" .. tokens[i] .. "&token_type_hint=" .. hint)
end
response = c.check
done = c.done
