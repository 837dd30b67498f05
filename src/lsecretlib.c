/* lsecretlib.c: tokend.secret: a setting declared a secret, as a handle whose bytes never reach Lua. */
#include "llib.h"
#include "lsecret.h"

/* tokend.secret(name) -> handle; raises when name is not set (a script that needs a key
 * fails at load, naming it). */
static int lsecret_declare_lua(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const char *name = luaL_checkstring(L, 1);
    const secret *s;
    char err[256];
    if (secret_declare(name, lhost_world_of(h)->env, &s, err, sizeof err) < 0)
        return luaL_error(L, "tokend.secret: %s", err);
    lsecret_push(L, s);
    return 1;
}

void lsecretlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "secret", lsecret_declare_lua }, { NULL, NULL } };
    llib_register(L, h, fns);
}
