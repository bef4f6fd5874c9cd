-- GET the UserInfo endpoint with a bearer token, cycling over pre-issued access tokens (BENCH_TOKENS).
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.headers["Authorization"] = nil
c.cycle_tokens(function(token)
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. token}, nil)
end)
