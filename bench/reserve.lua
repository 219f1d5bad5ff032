-- wrk script: POST a reservation of one unit, rotating over the bearer tokens in TOKENS_FILE.
local tokens = {}
local sale = os.getenv("SALE_ID")
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  local t = tokens[(i % #tokens) + 1]
  return wrk.format("POST", "/api/v1/cart/items",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. t },
    '{"sale_id":"' .. sale .. '","quantity":1}')
end
