-- wrk script for the waiting room. QUEUE_MODE=join: each request joins the sale's line with the
-- next bearer token of TOKENS_FILE (its own device), so every request is a new entrant;
-- QUEUE_MODE=poll: GET …/queue/me, rotating over the first POLLERS tokens (already in line).
local tokens = {}
local sale = os.getenv("SALE_ID")
local mode = os.getenv("QUEUE_MODE") or "poll"
local pollers = tonumber(os.getenv("POLLERS") or "1000")
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
local i = tonumber(os.getenv("START") or "0")
request = function()
  i = i + 1
  if mode == "join" then
    local t = tokens[(i % #tokens) + 1]
    return wrk.format("POST", "/api/v1/sales/" .. sale .. "/queue",
      { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. t },
      '{"device_id":"d' .. i .. '"}')
  end
  local t = tokens[(i % math.min(pollers, #tokens)) + 1]
  return wrk.format("GET", "/api/v1/sales/" .. sale .. "/queue/me",
    { ["Authorization"] = "Bearer " .. t })
end
