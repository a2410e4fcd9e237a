-- wrk script for the bench's T1: POST one JSON body over keep-alive connections until this thread has had
-- its share of responses, then say so (the bench then stops wrk with SIGINT, which prints the summary).
--   wrk -t1 -c16 -d300s -s bench/post_n.lua URL -- <requests> <body file>
function init(args)
  remaining = tonumber(args[1])
  local f = assert(io.open(args[2], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  failures = 0
end

function response(status, headers, body)
  if status ~= 202 and status ~= 200 then
    failures = failures + 1
  end
  remaining = remaining - 1
  if remaining == 0 then
    io.write("WRK-DONE\n")  -- wrk itself waits out -d: the bench interrupts it on this line
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format("WRK requests=%d errors=%d non2xx=%d p50_us=%d p99_us=%d\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
