-- POST the token endpoint: client_credentials with client_secret_basic (BENCH_BASIC); an RS256 JWT comes back.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "grant_type=client_credentials"
response = c.check
done = c.done
