-- The nginx + Lua peer's /token: one upstream call, the token alone in the answer.
local res = ngx.location.capture("/_aai", { args = { expires_in_seconds = 60 } })
local body = res.status == 200 and cjson.decode(res.body)
ngx.header["Content-Type"] = "application/json"
ngx.header["Cache-Control"] = "no-store"
if not body or not body.token then
  ngx.status = 500
  ngx.say('{"error":"Failed to generate token"}')
  return
end
ngx.say(cjson.encode({ token = body.token }))
