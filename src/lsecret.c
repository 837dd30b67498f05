/* lsecret.c: secret handles in Lua (opaque values whose bytes stay in C) and the C buffers their bytes go through. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "crypto.h"
#include "lsecret.h"

#define LSECRET_CLASS "tokend.secret"
#define LSECRET_HANDLES "tokend.secret.handles" /* registry: name -> handle */
#define LSECRET_BUF "tokend.secret.buf"
#define LSECRET_ENCODE "tokend.secret.encode" /* registry: a private cjson.encode */
#define LSECRET_JSON_DEPTH 64
#define LSECRET_PLACEHOLDER "tokend-secret-"

extern int luaopen_cjson(lua_State *L);

/* A handle: the secret it stands for (secrets live as long as the process). */
typedef struct lsecret_handle {
    const secret *s;
} lsecret_handle;

static int lsecret_tostring(lua_State *L) {
    lsecret_handle *h = luaL_checkudata(L, 1, LSECRET_CLASS);
    lua_pushfstring(L, "secret:%s", secret_name(h->s));
    return 1;
}

/* Every other use of a handle raises: its bytes never reach Lua. */
static int lsecret_misuse(lua_State *L) {
    return luaL_error(L,
                      "tokend.secret: a secret cannot be read, joined or indexed in Lua (its bytes stay in C); "
                      "give the handle to tokend.http.request (a header, a query value, a json body, or a "
                      "template such as { \"Token \", secret }) or to tokend.jwt");
}

static void lsecret_class(lua_State *L) {
    static const char *const refused[] = { "__concat", "__index", "__newindex", "__len", "__call",
                                           "__unm",    "__add",   "__lt",       "__le",  "__close" };
    if (luaL_newmetatable(L, LSECRET_CLASS)) { /* sets __name */
        lua_pushcfunction(L, lsecret_tostring);
        lua_setfield(L, -2, "__tostring");
        for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
            lua_pushcfunction(L, lsecret_misuse);
            lua_setfield(L, -2, refused[i]);
        }
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
}

void lsecret_push(lua_State *L, const secret *s) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LSECRET_HANDLES);
    if (lua_getfield(L, -1, secret_name(s)) == LUA_TUSERDATA) {
        lua_remove(L, -2);
        return;
    }
    lua_pop(L, 1);
    lsecret_class(L);
    lsecret_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
    h->s = s;
    luaL_setmetatable(L, LSECRET_CLASS);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, secret_name(s));
    lua_remove(L, -2);
}

const secret *lsecret_test(lua_State *L, int idx) {
    lsecret_handle *h = lua_type(L, idx) == LUA_TUSERDATA ? luaL_testudata(L, idx, LSECRET_CLASS) : NULL;
    return h ? h->s : NULL;
}

void lsecret_refuse(lua_State *L, int idx, const char *where) {
    const secret *s = lsecret_test(L, idx);
    if (s)
        luaL_error(L, "%s: secret:%s cannot go there (a secret's bytes never leave C but for the calls that use it)",
                   where, secret_name(s));
}

/* ---- buffers ---- */

void lsecret_buf_clear(lsecret_buf *b) {
    if (b->data) {
        explicit_bzero(b->data, b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}

static int lsecret_buf_gc(lua_State *L) {
    lsecret_buf_clear(luaL_checkudata(L, 1, LSECRET_BUF));
    return 0;
}

lsecret_buf *lsecret_buf_push(lua_State *L) {
    lsecret_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, LSECRET_BUF)) {
        lua_pushcfunction(L, lsecret_buf_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_setmetatable(L, -2);
    return b;
}

void lsecret_buf_add(lua_State *L, lsecret_buf *b, const char *data, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (cap < b->len + len + 1) cap *= 2;
        char *d = malloc(cap); /* not realloc: the old bytes are wiped, not left behind */
        if (!d) luaL_error(L, "out of memory");
        if (b->len) memcpy(d, b->data, b->len);
        if (b->data) {
            explicit_bzero(b->data, b->cap);
            free(b->data);
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

/* ---- templates ---- */

/* Appends one part of a template: a string, a number or a secret. 0 for anything else. */
static int lsecret_render_part(lua_State *L, int idx, lsecret_buf *b) {
    const secret *s = lsecret_test(L, idx);
    size_t len;
    if (s) {
        const char *v = secret_value(s, &len);
        lsecret_buf_add(L, b, v, len);
        return 1;
    }
    if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
        const char *v = lua_tolstring(L, idx, &len);
        lsecret_buf_add(L, b, v, len);
        return 1;
    }
    return 0;
}

void lsecret_render(lua_State *L, int idx, lsecret_buf *b, const char *what) {
    idx = lua_absindex(L, idx);
    if (lsecret_render_part(L, idx, b)) return;
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s must be a string, a number, a secret or a list of them (got %s)", what,
                   luaL_typename(L, idx));
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        if (!lsecret_render_part(L, -1, b))
            luaL_error(L, "%s: a template's parts are strings, numbers or secrets (got %s)", what,
                       luaL_typename(L, -1));
        lua_pop(L, 1);
    }
}

/* ---- JSON ---- */

/* Pushes a copy of the value at idx for cjson: tables copied (their metatables kept, for
 * cjson's array markers), each handle replaced by "<prefix><n>" where n is its place in
 * the list at index secrets. seen (a table) finds cycles. */
static void lsecret_json_copy(lua_State *L, int idx, int seen, int secrets, const char *prefix, int depth,
                              const char *what) {
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 8, what);
    if (lsecret_test(L, idx)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, secrets) + 1;
        lua_pushvalue(L, idx);
        lua_rawseti(L, secrets, n);
        lua_pushfstring(L, "%s%I", prefix, n);
        return;
    }
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_pushvalue(L, idx);
        return;
    }
    if (depth > LSECRET_JSON_DEPTH) luaL_error(L, "%s is nested deeper than %d", what, LSECRET_JSON_DEPTH);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, seen) != LUA_TNIL) luaL_error(L, "%s holds a cycle", what);
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lsecret_test(L, -2)) luaL_error(L, "%s: a secret cannot be a name in JSON", what);
        lua_pushvalue(L, -2);
        lsecret_json_copy(L, -2, seen, secrets, prefix, depth + 1, what);
        lua_rawset(L, -5);
        lua_pop(L, 1);
    }
    if (lua_getmetatable(L, idx)) lua_setmetatable(L, -2);
    lua_pushvalue(L, idx);
    lua_pushnil(L);
    lua_rawset(L, seen); /* a table met twice without a cycle is fine */
}

/* Appends s as a JSON string. */
static void lsecret_json_string(lua_State *L, lsecret_buf *b, const char *s, size_t len) {
    lsecret_buf_add(L, b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') lsecret_buf_add(L, b, "\\", 1);
        lsecret_buf_add(L, b, s + i, 1); /* a secret holds no control character */
    }
    lsecret_buf_add(L, b, "\"", 1);
}

void lsecret_json(lua_State *L, int idx, lsecret_buf *b, const char *what) {
    unsigned char nonce[16];
    char hex[2 * sizeof nonce + 1], prefix[sizeof LSECRET_PLACEHOLDER + sizeof hex + 1];
    int top = lua_gettop(L);
    idx = lua_absindex(L, idx);
    /* The placeholders carry a random part: no text a client chose can stand for one. */
    if (crypto_random(nonce, sizeof nonce) < 0) luaL_error(L, "%s: no random bytes", what);
    crypto_hex(nonce, sizeof nonce, hex);
    snprintf(prefix, sizeof prefix, "%s%s-", LSECRET_PLACEHOLDER, hex);
    lua_newtable(L); /* top + 1: seen */
    lua_newtable(L); /* top + 2: secrets */
    if (lua_getfield(L, LUA_REGISTRYINDEX, LSECRET_ENCODE) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        lua_pushcfunction(L, luaopen_cjson);
        lua_call(L, 0, 1);
        lua_getfield(L, -1, "encode");
        lua_remove(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, LSECRET_ENCODE);
    }
    lsecret_json_copy(L, idx, top + 1, top + 2, prefix, 0, what);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) luaL_error(L, "%s cannot be JSON: %s", what, lua_tostring(L, -1));
    size_t len, plen = strlen(prefix);
    const char *json = lua_tolstring(L, -1, &len), *end = json + len, *p = json;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), prefix, plen);
        if (!q || q == json || q[-1] != '"') {
            q = q ? q + 1 : end;
            lsecret_buf_add(L, b, p, (size_t)(q - p));
            p = q;
            continue;
        }
        char *stop;
        lua_Integer n = (lua_Integer)strtoll(q + plen, &stop, 10);
        lsecret_buf_add(L, b, p, (size_t)(q - 1 - p)); /* up to the opening quote */
        lua_rawgeti(L, top + 2, n);
        const secret *s = lsecret_test(L, -1);
        if (!s || *stop != '"') luaL_error(L, "%s: a placeholder of tokend's was not its own", what);
        size_t vlen;
        const char *v = secret_value(s, &vlen);
        lua_pop(L, 1);
        lsecret_json_string(L, b, v, vlen);
        p = stop + 1; /* past the closing quote */
    }
    lua_settop(L, top);
}
