/* lcookielib.c: tokend.cookie: Set-Cookie values with safe defaults (HttpOnly, SameSite=Lax). */
#include <string.h>
#include <strings.h>

#include "cookie.h"
#include "llib.h"

/* Reads opts.<field> as a string that an attribute may carry (NULL when absent). */
static const char *lcookie_attribute(lua_State *L, const char *field) {
    lua_getfield(L, 3, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    size_t len;
    const char *v = lua_tolstring(L, -1, &len);
    if (!v || lua_type(L, -1) != LUA_TSTRING || !cookie_attribute_ok(v, len))
        luaL_error(L, "tokend.cookie: %s must be a string without ';' or control characters", field);
    lua_pop(L, 1); /* the options table keeps it alive */
    return v;
}

static int lcookie_flag(lua_State *L, const char *field, int dflt) {
    lua_getfield(L, 3, field);
    int v = lua_isnil(L, -1) ? dflt : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* tokend.cookie(name, value[, {max_age, path, domain, secure, http_only = true,
 * same_site = "Lax"}]) -> the value of a Set-Cookie header */
static int lcookie_make(lua_State *L) {
    size_t nlen, vlen;
    const char *name = luaL_checklstring(L, 1, &nlen);
    const char *value = luaL_checklstring(L, 2, &vlen);
    luaL_argcheck(L, cookie_name_ok(name, nlen), 1, "not a cookie name (letters, digits and !#$%&'*+-.^_`|~)");
    luaL_argcheck(L, cookie_value_ok(value, vlen), 2,
                  "a cookie value holds no spaces, quotes, commas, semicolons or backslashes (encode it first)");
    if (lua_isnoneornil(L, 3)) {
        lua_settop(L, 2);
        lua_newtable(L);
    }
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    const char *path = lcookie_attribute(L, "path");
    const char *domain = lcookie_attribute(L, "domain");
    const char *same_site = lcookie_attribute(L, "same_site");
    int secure = lcookie_flag(L, "secure", 0), http_only = lcookie_flag(L, "http_only", 1);
    if (!same_site) same_site = "Lax";
    luaL_argcheck(L,
                  strcasecmp(same_site, "Lax") == 0 || strcasecmp(same_site, "Strict") == 0 ||
                          strcasecmp(same_site, "None") == 0,
                  3, "same_site is \"Lax\", \"Strict\" or \"None\"");
    luaL_argcheck(L, strcasecmp(same_site, "None") != 0 || secure, 3,
                  "same_site = \"None\" needs secure = true (browsers refuse it otherwise)");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, name, nlen);
    luaL_addchar(&b, '=');
    luaL_addlstring(&b, value, vlen);
    lua_getfield(L, 3, "max_age");
    if (!lua_isnil(L, -1)) {
        int isint = 0;
        lua_Integer max_age = lua_tointegerx(L, -1, &isint);
        luaL_argcheck(L, isint, 3, "max_age is whole seconds");
        lua_pushfstring(L, "; Max-Age=%I", max_age);
        luaL_addvalue(&b);
    }
    lua_pop(L, 1);
    luaL_addstring(&b, "; Path=");
    luaL_addstring(&b, path ? path : "/");
    if (domain) {
        luaL_addstring(&b, "; Domain=");
        luaL_addstring(&b, domain);
    }
    if (secure) luaL_addstring(&b, "; Secure");
    if (http_only) luaL_addstring(&b, "; HttpOnly");
    luaL_addstring(&b, "; SameSite=");
    luaL_addchar(&b, (char)(same_site[0] & ~0x20)); /* Lax, Strict, None */
    for (const char *p = same_site + 1; *p; p++) luaL_addchar(&b, (char)(*p | 0x20));
    luaL_pushresult(&b);
    return 1;
}

void lcookielib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "cookie", lcookie_make }, { NULL, NULL } };
    llib_register(L, h, fns);
}
