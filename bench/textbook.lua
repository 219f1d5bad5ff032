-- wrk script for the textbook baseline server (crates/drill/src/bin/textbook.rs): POST /reserve.
request = function()
  return wrk.format("POST", "/reserve", { ["Content-Type"] = "application/json" }, "{}")
end
