/* lstate.c: a Lua 5.4 state for tokend: capped memory, an instruction budget, text-only loaders. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <lua-cjson.h>

#include "lguard.h"
#include "lpattern.h"
#include "lstate.h"

#define LSTATE_HOOK_STEP 1000 /* instructions between two calls of the count hook */
#define LSTATE_SMALL_MAX 256  /* blocks up to this size are recycled by the state */
#define LSTATE_SMALL_STEP 16
#define LSTATE_CLASSES (LSTATE_SMALL_MAX / LSTATE_SMALL_STEP)
#define LSTATE_ALLOC_BYTES 64 /* bytes of a large block per instruction of the budget */

extern int luaopen_cjson_safe(lua_State *L);

typedef struct lstate_block {
    struct lstate_block *next;
} lstate_block;

/* What a state's allocator owns: its size, its cap and its freed small blocks. */
typedef struct lstate_heap {
    size_t used, limit;
    lstate_block *free_blocks[LSTATE_CLASSES];
} lstate_heap;

/* ---- memory ---- */

/* Small blocks (tables, strings, closures of a request) come and go by the thousand per
 * second: a state keeps its freed ones in per-size lists, which costs less than malloc
 * and free. Only the state's own thread touches them. */
static size_t lstate_class(size_t n) {
    return (n + LSTATE_SMALL_STEP - 1) / LSTATE_SMALL_STEP - 1;
}

static void *lstate_block_get(lstate_heap *hp, size_t n) {
    if (n > LSTATE_SMALL_MAX) return malloc(n);
    lstate_block **list = &hp->free_blocks[lstate_class(n)];
    lstate_block *b = *list;
    if (!b) return malloc((lstate_class(n) + 1) * LSTATE_SMALL_STEP);
    *list = b->next;
    return b;
}

static void lstate_block_put(lstate_heap *hp, void *p, size_t n) {
    if (n > LSTATE_SMALL_MAX) {
        free(p);
        return;
    }
    lstate_block *b = p;
    b->next = hp->free_blocks[lstate_class(n)];
    hp->free_blocks[lstate_class(n)] = b;
}

/* lua_Alloc with the state's memory cap. Never fails a shrink (Lua relies on that).
 * Growing a large block is work the count hook does not see (a concatenation, string.rep,
 * string.format or table.concat fills the bytes in C): it is charged to the current budget,
 * and refused once the budget is spent (the code that asked stops with a memory error,
 * which the state's pcall does not catch either then). */
static void *lstate_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    lstate_heap *hp = ud;
    size_t old = ptr ? osize : 0;
    void *p;
    if (nsize == 0) {
        if (ptr) lstate_block_put(hp, ptr, old);
        hp->used -= old;
        return NULL;
    }
    if (nsize > old && hp->used + (nsize - old) > hp->limit) return NULL;
    if (nsize > old && nsize > LSTATE_SMALL_MAX && lbudget_charge((long)((nsize - old) / LSTATE_ALLOC_BYTES)) < 0)
        return NULL;
    if (old > LSTATE_SMALL_MAX && nsize > LSTATE_SMALL_MAX) {
        p = realloc(ptr, nsize);
        if (!p && nsize <= old) p = ptr;
    } else if (old && old <= LSTATE_SMALL_MAX && nsize <= LSTATE_SMALL_MAX &&
               lstate_class(old) == lstate_class(nsize)) {
        p = ptr;
    } else if ((p = lstate_block_get(hp, nsize))) {
        if (ptr) {
            memcpy(p, ptr, old < nsize ? old : nsize);
            lstate_block_put(hp, ptr, old);
        }
    } else if (nsize <= old) {
        p = ptr; /* a large block kept for a small size: still big enough for its class */
    }
    if (!p) return NULL;
    hp->used = hp->used - old + nsize;
    return p;
}

static void lstate_heap_free(lstate_heap *hp) {
    for (size_t i = 0; i < LSTATE_CLASSES; i++) {
        while (hp->free_blocks[i]) {
            lstate_block *b = hp->free_blocks[i];
            hp->free_blocks[i] = b->next;
            free(b);
        }
    }
    free(hp);
}

/* ---- the instruction budget ---- */

/* Once the budget is spent, the running code stops: a yieldable coroutine is suspended
 * and never resumed (no pcall can catch a yield; a script's own resume of it raises the
 * budget's error, lguard.c); elsewhere (inside a C function that called back into Lua,
 * such as a table.sort comparator) an error is raised, which the state's pcall and xpcall
 * pass on instead of catching. Each call charges the instructions the thread's count stood
 * for (LSTATE_HOOK_STEP, or lguard's count for a coroutine a script resumed). */
static void lstate_count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    int left = lbudget_tick(lua_gethookcount(L));
    if (left == 0) return;
    if (left > 0) { /* running long for its budget: look at every instruction now */
        if (lua_gethookcount(L) != 1) lua_sethook(L, lstate_count_hook, LUA_MASKCOUNT, 1);
        return;
    }
    if (lua_isyieldable(L)) {
        lua_yield(L, 0);
        return;
    }
    lguard_budget_error(L);
}

void lstate_limit_thread(lua_State *co) {
    lua_sethook(co, lstate_count_hook, LUA_MASKCOUNT, LSTATE_HOOK_STEP);
}

int lstate_resume(lua_State *co, lua_State *from, int nargs, int *nres, lbudget *b) {
    if (lua_gethookcount(co) != LSTATE_HOOK_STEP) lstate_limit_thread(co); /* left at 1 by a long run */
    lbudget *outer = lbudget_enter(b);
    int rc = lua_resume(co, from, nargs, nres);
    lbudget_enter(outer);
    if (!b || !b->exhausted || rc == LUA_OK) return rc;
    /* Suspended by the hook, or an error the spent budget caused (a refused allocation's
     * "not enough memory"): the error says why. */
    if (rc == LUA_YIELD) {
        lua_pop(co, *nres);
        *nres = 0;
    } else {
        const char *msg = lua_tostring(co, -1);
        if (msg && strstr(msg, LBUDGET_ERROR)) return rc;
        lua_pop(co, 1);
    }
    char why[160];
    lua_pushstring(co, lbudget_why(b, why, sizeof why));
    return LUA_ERRRUN;
}

/* pcall and xpcall finish here: an error raised because the budget is spent goes on. */
static int lstate_pcall_finish(lua_State *L, int status, lua_KContext extra) {
    if (status != LUA_OK && status != LUA_YIELD) {
        if (lbudget_charge(0) < 0) return lua_error(L); /* the budget is spent: no catching */
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

/* pcall(f, ...) */
static int lstate_pcall(lua_State *L) {
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, lstate_pcall_finish);
    return lstate_pcall_finish(L, status, 0);
}

/* xpcall(f, msgh, ...) */
static int lstate_xpcall(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, lstate_pcall_finish);
    return lstate_pcall_finish(L, status, 2);
}

static int lstate_no_sethook(lua_State *L) {
    return luaL_error(L, "debug.sethook is not available in tokend: the hook enforces the instruction budget");
}

/* ---- loaders that take text only ---- */

/* load(chunk [, name [, mode [, env]]]) that refuses binary chunks whatever mode says. */
static int lstate_load_text(lua_State *L) {
    lua_settop(L, 4);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 4, LUA_MULTRET);
    return lua_gettop(L);
}

/* loadfile(name [, mode [, env]]), text only. */
static int lstate_loadfile_text(lua_State *L) {
    const char *name = luaL_optstring(L, 1, NULL);
    int env = !lua_isnone(L, 3) ? 3 : 0;
    if (luaL_loadfilex(L, name, "t") != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (env) {
        lua_pushvalue(L, env);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

/* dofile(name), text only. */
static int lstate_dofile_text(lua_State *L) {
    const char *name = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfilex(L, name, "t") != LUA_OK) return lua_error(L);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* package.searchers[2] replacement: Lua modules on package.path, as text only. */
static int lstate_search_text(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "searchpath");
    lua_pushstring(L, name);
    lua_getfield(L, -3, "path");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) return 1; /* the message of where it looked */
    const char *file = lua_tostring(L, -2);
    if (luaL_loadfilex(L, file, "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, file, lua_tostring(L, -1));
    lua_pushstring(L, file);
    return 2;
}

static void lstate_preload(lua_State *L, const char *name, lua_CFunction fn) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* Replaces t[name] (t at the top of the stack) with fn. */
static void lstate_replace(lua_State *L, const char *name, lua_CFunction fn) {
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, name);
}

/* Opens the libraries and closes the ways around the state's limits (protected). */
static int lstate_open(lua_State *L) {
    luaL_openlibs(L);
    lua_pushglobaltable(L);
    lua_getfield(L, -1, "load");
    lua_pushcclosure(L, lstate_load_text, 1);
    lua_setfield(L, -2, "load");
    lstate_replace(L, "loadfile", lstate_loadfile_text);
    lstate_replace(L, "dofile", lstate_dofile_text);
    lstate_replace(L, "pcall", lstate_pcall);
    lstate_replace(L, "xpcall", lstate_xpcall);
    lua_getfield(L, -1, "package");
    lua_getfield(L, -1, "searchers");
    lua_pushcfunction(L, lstate_search_text);
    lua_rawseti(L, -2, 2);
    lua_pop(L, 2);
    lua_getfield(L, -1, "debug");
    lstate_replace(L, "sethook", lstate_no_sethook);
    lua_pop(L, 1);
    lua_getfield(L, -1, "string");
    lpattern_open(L);
    lua_pop(L, 2);
    lguard_open(L);
    lstate_preload(L, "cjson", luaopen_cjson);
    lstate_preload(L, "cjson.safe", luaopen_cjson_safe);
    return 0;
}

lua_State *lstate_new(size_t memory_limit, char *err, size_t errlen) {
    lstate_heap *hp = calloc(1, sizeof *hp);
    lua_State *L = NULL;
    if (!hp) goto nomem;
    hp->limit = memory_limit;
    L = lua_newstate(lstate_alloc, hp);
    if (!L) goto nomem;
    lua_pushcfunction(L, lstate_open);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot set up Lua: %s", lua_tostring(L, -1));
        lstate_close(L);
        return NULL;
    }
    lstate_limit_thread(L);
    return L;
nomem:
    snprintf(err, errlen, "out of memory");
    if (hp) free(hp);
    return NULL;
}

void lstate_close(lua_State *L) {
    if (!L) return;
    void *ud = NULL;
    lua_getallocf(L, &ud);
    lua_close(L);
    lstate_heap_free(ud);
}
