-- wrk script: reserve.lua spread over several nodes. NODES="host:port host:port ..."; wrk
-- thread k talks to node k (mod the number of nodes), so run wrk with -t a multiple of it, and
-- set THREADS to the -t given.
-- Each thread starts at its own place in the token rotation (a third of it apart), so the
-- threads seldom reserve for the same buyer at the same moment.
dofile("bench/reserve.lua")
local nodes = {}
for hp in string.gmatch(os.getenv("NODES") or "", "%S+") do nodes[#nodes + 1] = hp end
local ntokens = 0
for _ in io.lines(os.getenv("TOKENS_FILE")) do ntokens = ntokens + 1 end
local n = 0
function setup(thread)
  n = n + 1
  local threads = tonumber(os.getenv("THREADS") or "3")
  thread:set("skip", math.floor(((n - 1) % threads) * ntokens / threads))
  if #nodes == 0 then return end
  local host, port = nodes[((n - 1) % #nodes) + 1]:match("^(.*):(%d+)$")
  thread.addr = wrk.lookup(host, port)[1]
end
function init(args)
  for _ = 1, skip or 0 do request() end
end
