-- GET the JWK Set (the URL's path is the server's jwks_uri path).
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.method = "GET"
done = c.done
