-- POST the token endpoint: refresh_token grant with rotation. Run with one connection per thread (bench/run.py
-- does): each thread owns one pre-issued refresh token (line thread_id of BENCH_TOKENS) and sends its current
-- token; a 200 response's new refresh token replaces it, so a token is never presented twice after rotation
-- (that would revoke its family). wrk builds the first request of a connection twice and sends one, so the
-- token is not consumed when the request is built, only replaced when the answer comes.
local c = dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
c.headers()
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local current = "exhausted"
setup = c.setup
function init(args)
  current = c.lines(os.getenv("BENCH_TOKENS"), thread_id, tonumber(os.getenv("BENCH_THREADS")))[1] or "exhausted"
end
function request()
  return wrk.format("POST", nil, nil, "grant_type=refresh_token&refresh_token=" .. current)
end
function response(status, headers, body)
  c.check(status, headers, body)
  local fresh = body and string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
  if fresh then current = fresh end
end
done = c.done
