/* fuzz_toolkit.c: what the script API reads from clients and identity providers: JWTs, JWK Sets, Cookie headers, base64. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "cookie.h"
#include "crypto.h"

int luaopen_tokend(lua_State *L);

/* A public EC P-256 key (its private half thrown away) and an "oct" key, which a key set
 * must never take. */
#define FUZZ_JWKS \
    "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"kid\": \"k1\", " \
    "\"x\": \"rJLaMauhLhfDO2gY-wZhtYenA2IN4kw2qJSHl9D7gmE\", \"y\": " \
    "\"PqfVogJ1P-agoQyqen4g9Lt6M66I5tgnZFLNRr4hEZ8\"}, " \
    "{\"kty\": \"oct\", \"kid\": \"h1\", \"k\": \"c2VjcmV0\"}]}"

/* Each input: its first byte picks what the rest is. A token must get claims, or nil, a
 * message and one of the kinds of failure, never an error; claims that pass the checks of
 * CHECKED hold its iss and aud and a finite exp; a JWK Set given by a script may raise (a
 * programmer error) but never crash; a token signed with the "oct" key as an HMAC secret
 * is never accepted. */
static const char fuzz_script[] =
        "local tokend = require 'tokend'\n"
        "local JWKS = ...\n"
        "local SECRET = { secret = 'secret', leeway_seconds = 1e9, require_exp = false }\n"
        "local KEYS = { keys = JWKS, leeway_seconds = 1e9, require_exp = false, issuer = false, audience = false }\n"
        "local CHECKED = { secret = 'secret', issuer = 'i', audience = { 'a', 'b' }, leeway_seconds = 0 }\n"
        "local KINDS = { malformed = 1, bad_algorithm = 1, bad_signature = 1, unknown_key = 1, expired = 1,\n"
        "                not_yet_valid = 1, bad_issuer = 1, bad_audience = 1, jwks_unavailable = 1 }\n"
        "local function answer(claims, err, kind)\n"
        "  assert(type(claims) == 'table' and err == nil and kind == nil or\n"
        "         claims == nil and type(err) == 'string' and KINDS[kind], 'not claims, nor nil, err, kind')\n"
        "  return claims\n"
        "end\n"
        "return function(kind, input)\n"
        "  if kind == 0 then\n"
        "    answer(tokend.jwt.verify(input, SECRET))\n"
        "    local checked = answer(tokend.jwt.verify(input, CHECKED))\n"
        "    if checked then\n"
        "      local aud = type(checked.aud) == 'table' and checked.aud or { checked.aud }\n"
        "      local met = false\n"
        "      for _, a in ipairs(aud) do met = met or a == 'a' or a == 'b' end\n"
        "      assert(checked.iss == 'i' and met, 'passed with another iss or aud')\n"
        "      assert(math.type(checked.exp) and checked.exp == checked.exp and math.abs(checked.exp) ~= math.huge,\n"
        "             'passed with an exp that is not a finite number')\n"
        "    end\n"
        "    local claims = answer(tokend.jwt.verify(input, KEYS))\n"
        "    assert(not (claims and input:find('^eyJhbGciOiJIUzI1Ni')), 'an HMAC token passed a public key set')\n"
        "  elseif kind == 1 then\n"
        "    local ok, err = pcall(tokend.jwt.verify, 'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln',\n"
        "                          { keys = input, issuer = false, audience = false })\n"
        "    assert(ok or type(err) == 'string')\n"
        "  else\n"
        "    for _, decode in ipairs { tokend.crypto.base64_decode, tokend.crypto.base64url_decode } do\n"
        "      local bytes, err = decode(input)\n"
        "      assert(type(bytes) == 'string' or type(err) == 'string')\n"
        "    end\n"
        "  end\n"
        "end\n";

static int fuzz_cookie_pair(void *ud, const char *name, size_t nlen, const char *value, size_t vlen) {
    const char *header = ud;
    size_t len = strlen(header);
    if (nlen == 0 || name < header || name + nlen > header + len || value < header || value + vlen > header + len)
        abort();
    return 0;
}

/* Decoding and encoding again gives the same bytes back. */
static void fuzz_base64(const uint8_t *data, size_t size, int url) {
    unsigned char *out = malloc(size * 3 / 4 + 3), *again = NULL;
    char *text = NULL;
    size_t n, m;
    if (!out || crypto_base64_decode((const char *)data, size, out, &n, url) < 0) goto out;
    text = malloc(crypto_base64_size(n));
    again = malloc(n + 3);
    if (!text || !again) goto out;
    size_t tlen = crypto_base64_encode(out, n, text, url);
    if (crypto_base64_decode(text, tlen, again, &m, url) < 0 || m != n || memcmp(out, again, n) != 0) abort();
out:
    free(out);
    free(text);
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lua_State *L;
    if (size < 1) return 0;
    if (!L) {
        L = luaL_newstate();
        luaL_openlibs(L);
        luaL_requiref(L, "tokend", luaopen_tokend, 0);
        lua_pop(L, 1);
        if (luaL_loadstring(L, fuzz_script) != LUA_OK) abort();
        lua_pushliteral(L, FUZZ_JWKS);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) abort();
        lua_setglobal(L, "fuzz_check");
    }
    int kind = data[0] % 4;
    if (kind == 3) {
        char *header = malloc(size);
        if (!header) return 0;
        memcpy(header, data + 1, size - 1);
        header[size - 1] = '\0';
        cookie_parse(header, fuzz_cookie_pair, header);
        free(header);
        fuzz_base64(data + 1, size - 1, 0);
        fuzz_base64(data + 1, size - 1, 1);
    }
    lua_getglobal(L, "fuzz_check");
    lua_pushinteger(L, kind);
    lua_pushlstring(L, (const char *)data + 1, size - 1);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    return 0;
}
