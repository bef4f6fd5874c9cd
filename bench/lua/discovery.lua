-- GET the OpenID Provider metadata (the URL's path is the server's discovery path).
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.method = "GET"
done = c.done
