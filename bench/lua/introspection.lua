-- POST the introspection endpoint with the client's credentials, cycling over pre-issued tokens (BENCH_TOKENS).
-- An answer that does not find the token active counts as an error: an unknown token is answered quickly.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local hint = os.getenv("BENCH_TOKEN_HINT") or "access_token"
c.cycle_tokens(function(token)
  return wrk.format("POST", nil, nil, "token=" .. token .. "&token_type_hint=" .. hint)
end, function(body) return body:find('"active"%s*:%s*true') ~= nil end)
