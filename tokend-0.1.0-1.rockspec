-- luarocks make: builds the tokend Lua module (tokend.so) with CMake and installs it into
-- the rocks tree (needs Debian's liblua5.4-dev, libmicrohttpd-dev, libcurl4-openssl-dev,
-- lua-cjson-dev, cmake and a C compiler).
rockspec_format = "3.0"
package = "tokend"
version = "0.1.0-1"
source = { url = "git+file:///dev/null" }   -- built from the checkout with `luarocks make`
description = {
  summary = "Short-lived AssemblyAI streaming tokens, and a Lua-scriptable token server",
  detailed = [[
    require "tokend": mint AssemblyAI Universal-Streaming temporary tokens (the API key stays
    in C memory) and serve routes defined in the calling program, with libmicrohttpd and
    libcurl on an event loop the program can drive itself.
  ]],
  license = "MIT",
}
dependencies = { "lua >= 5.4, < 5.5" }
build = {
  type = "cmake",
  variables = {
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    TOKEND_LUA_CMOD_DIR = "$(LIBDIR)",
    BUILD_TESTING = "OFF",
    TOKEND_LUA_ROCK = "ON",
    CMAKE_BUILD_TYPE = "Release",
  },
}
