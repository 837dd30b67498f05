/* ljwks.c: an identity provider's JWK Set for tokend.jwt: fetched per Lua state, shared with the other workers, waited for. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "fetch.h"
#include "ljwks.h"
#include "log.h"
#include "shdict.h"

#define LJWKS_FETCH_MS 3000 /* deadline of a JWKS fetch */
#define LJWKS_MAX_BYTES (256 * 1024)
#define LJWKS_CACHE "tokend.jwks"            /* registry: URL -> its ljwks, [0] the ljwks_cache */
#define LJWKS_SHARED "tokend.jwt"            /* the shared dictionary of documents, refetch times, failures */
#define LJWKS_SHARED_BYTES (8 * 1024 * 1024) /* its byte bound: JWKS documents are a few KiB */

/* A call waiting for a fetch. */
typedef struct ljwks_waiter {
    ljwks *jwks;
    lhost_waiter *w;
    int call_ref; /* registry: the values the call kept */
    int n;        /* their number */
    ljwks_resume_fn *resume;
    struct ljwks_waiter *next;
} ljwks_waiter;

struct ljwks {
    struct ljwks_cache *cache;
    char url[512];
    lua_CFunction parse;
    int keys_ref;        /* registry: the keys, LUA_NOREF before the first good fetch */
    uint64_t fetched_ms; /* when they were fetched */
    uint64_t ttl_ms;     /* jwks_ttl of the last call */
    uint64_t failed_ms;  /* the last failed fetch, 0 when it worked */
    char error[300];
    fetch_call *fetching;
    ljwks_waiter *waiters;
    struct ljwks *next; /* the cache's list */
};

/* The JWKS URLs of one state: a registry userdata, with a retire hook. */
typedef struct ljwks_cache {
    lhost *h;
    lua_State *L;
    ljwks *first;
    int stopped;
    shdict *shared; /* LJWKS_SHARED once opened (see ljwks_shared) */
} ljwks_cache;

/* Pushes the outcome of a waiting call (through lhost_wake): resume with its values. */
static int ljwks_push_waiter(lua_State *L, void *ud) {
    ljwks_waiter *p = ud;
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->call_ref);
    for (int i = 1; i <= p->n; i++) lua_rawgeti(L, 1, i);
    lua_remove(L, 1);
    return p->resume(L, p->jwks);
}

/* Ends every wait on j with the keys it has now (or its error). */
static void ljwks_wake_all(ljwks *j) {
    ljwks_waiter *p = j->waiters;
    j->waiters = NULL;
    while (p) {
        ljwks_waiter *next = p->next;
        lhost_wake(p->w, ljwks_push_waiter, p);
        luaL_unref(j->cache->L, LUA_REGISTRYINDEX, p->call_ref);
        free(p);
        p = next;
    }
}

static void ljwks_cancel_fetch(ljwks *j) {
    if (j->fetching) fetch_cancel(j->fetching);
    j->fetching = NULL;
}

static void ljwks_cache_on_retire(void *ud) {
    ljwks_cache *c = ud;
    c->stopped = 1;
    for (ljwks *j = c->first; j; j = j->next) {
        if (!j->fetching) continue;
        ljwks_cancel_fetch(j);
        snprintf(j->error, sizeof j->error, "the script was replaced while the JWKS was being fetched");
        j->failed_ms = loop_now_ms();
        ljwks_wake_all(j);
    }
}

static int ljwks_gc(lua_State *L) {
    ljwks *j = lua_touserdata(L, 1);
    ljwks_cancel_fetch(j);
    return 0;
}

ljwks *ljwks_of(lua_State *L, lhost *h, const char *url, lua_CFunction parse) {
    ljwks_cache *c;
    if (lua_getfield(L, LUA_REGISTRYINDEX, LJWKS_CACHE) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        c = lua_newuserdatauv(L, sizeof *c, 0);
        *c = (ljwks_cache){ h, lhost_state(h), NULL, 0, NULL };
        lua_rawseti(L, -2, 0);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, LJWKS_CACHE);
        lhost_on_retire(h, ljwks_cache_on_retire, c);
    }
    lua_rawgeti(L, -1, 0);
    c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, url) == LUA_TUSERDATA) {
        ljwks *j = lua_touserdata(L, -1);
        lua_pop(L, 2);
        return j;
    }
    lua_pop(L, 1);
    ljwks *j = lua_newuserdatauv(L, sizeof *j, 0);
    memset(j, 0, sizeof *j);
    j->cache = c;
    j->parse = parse;
    j->keys_ref = LUA_NOREF;
    snprintf(j->url, sizeof j->url, "%s", url);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, ljwks_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, -2, url);
    lua_pop(L, 1);
    j->next = c->first;
    c->first = j;
    return j;
}

/* Parses a fetched document into j's keys (protected; argument 1 is j, 2 the text). */
static int ljwks_store_keys(lua_State *L) {
    ljwks *j = lua_touserdata(L, 1);
    lua_pushcfunction(L, j->parse);
    lua_pushvalue(L, 2);
    lua_call(L, 1, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, j->keys_ref);
    j->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* Stores the document body into j's keys. Returns 0, or -1 with why on top of L. */
static int ljwks_store(lua_State *L, ljwks *j, const char *body, size_t len) {
    lua_pushcfunction(L, ljwks_store_keys);
    lua_pushlightuserdata(L, j);
    lua_pushlstring(L, body, len);
    return lua_pcall(L, 2, 0, 0) == LUA_OK ? 0 : -1;
}

/* The dictionary all workers share: JWKS documents ("doc <url>", kept jwks_ttl), the time
 * of each URL's last fetch ("refetch <url>", kept LJWKS_REFETCH_S) and failures ("failed
 * <url>", kept LJWKS_FAILED_S). */
static shdict *ljwks_shared(ljwks_cache *c) {
    char err[200];
    /* Opened once per state: every verification consults it, and opening takes the lock
     * of the registry all workers share. NULL (out of memory) is tried again next time. */
    if (!c->shared)
        c->shared = shdict_open(lhost_world_of(c->h)->shared, LJWKS_SHARED, 1024, LJWKS_SHARED_BYTES, err, sizeof err);
    return c->shared;
}

/* Gives the other workers a fetched document, and starts the refetch interval. */
static void ljwks_share(ljwks *j, const char *body, size_t len, uint64_t now) {
    shdict *d = ljwks_shared(j->cache);
    char key[600];
    if (!d || len > SHDICT_MAX_VALUE) return;
    shdict_value doc = { SHDICT_STRING, (char *)body, len, 0 }, one = { SHDICT_NUMBER, NULL, 0, 1 };
    snprintf(key, sizeof key, "doc %s", j->url);
    shdict_set(d, key, strlen(key), &doc, j->ttl_ms, now);
    snprintf(key, sizeof key, "refetch %s", j->url);
    shdict_set(d, key, strlen(key), &one, LJWKS_REFETCH_S * 1000, now);
    snprintf(key, sizeof key, "failed %s", j->url);
    shdict_delete(d, key, strlen(key));
}

/* Tells the other workers the last fetch failed, and why, for LJWKS_FAILED_S. */
static void ljwks_share_failure(ljwks *j, uint64_t now) {
    shdict *d = ljwks_shared(j->cache);
    char key[600];
    shdict_value why = { SHDICT_STRING, j->error, strlen(j->error), 0 };
    snprintf(key, sizeof key, "failed %s", j->url);
    if (d) shdict_set(d, key, strlen(key), &why, LJWKS_FAILED_S * 1000, now);
}

/* Learns of a fetch that failed lately in another worker. Returns 1 then. */
static int ljwks_failed_elsewhere(ljwks *j, uint64_t now) {
    shdict *d = ljwks_shared(j->cache);
    char key[600];
    shdict_value why;
    snprintf(key, sizeof key, "failed %s", j->url);
    if (!d || shdict_get(d, key, strlen(key), now, &why) < 0 || why.type != SHDICT_STRING) return 0;
    snprintf(j->error, sizeof j->error, "%s", why.s);
    free(why.s);
    int64_t left = shdict_ttl(d, key, strlen(key), now);
    j->failed_ms = now - (LJWKS_FAILED_S * 1000 - (uint64_t)(left > 0 ? left : 0));
    return 1;
}

/* Takes the document another worker fetched, if there is a fresh one. Returns 1 then. */
static int ljwks_adopt(lua_State *L, ljwks *j, uint64_t now) {
    shdict *d = ljwks_shared(j->cache);
    char key[600];
    shdict_value doc;
    snprintf(key, sizeof key, "doc %s", j->url);
    if (!d || shdict_get(d, key, strlen(key), now, &doc) < 0 || doc.type != SHDICT_STRING) return 0;
    int stored = ljwks_store(L, j, doc.s, doc.len);
    free(doc.s);
    if (stored < 0) {
        lua_pop(L, 1);
        return 0;
    }
    j->fetched_ms = now;
    return 1;
}

static void ljwks_on_fetched(void *ud, const fetch_result *r) {
    ljwks *j = ud;
    lua_State *L = j->cache->L;
    j->fetching = NULL;
    uint64_t now = loop_now_ms();
    if (r->failure != FAILURE_NONE || r->status != 200) {
        if (r->failure != FAILURE_NONE) snprintf(j->error, sizeof j->error, "the JWKS fetch failed: %s", r->error);
        else snprintf(j->error, sizeof j->error, "the JWKS fetch answered HTTP %ld", r->status);
        j->failed_ms = now;
    } else if (ljwks_store(L, j, r->body, r->body_len) < 0) {
        snprintf(j->error, sizeof j->error, "the JWKS is unusable: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
        j->failed_ms = now;
    } else {
        j->fetched_ms = now;
        j->failed_ms = 0;
        ljwks_share(j, r->body, r->body_len, now);
    }
    if (j->failed_ms) {
        log_msg(LOG_WARN, "jwt: %s: %s", j->url, j->error);
        ljwks_share_failure(j, now);
    }
    ljwks_wake_all(j);
}

/* Starts fetching j's JWKS unless a fetch is going on. Returns 0, or -1 (j->error set). */
static int ljwks_fetch(ljwks *j, const lhost_world *world) {
    if (j->fetching) return 0;
    if (j->cache->stopped) {
        snprintf(j->error, sizeof j->error, "the script was replaced by a reload");
        return -1;
    }
    fetch_request rq = { .url = j->url, .timeout_ms = LJWKS_FETCH_MS, .max_body = LJWKS_MAX_BYTES };
    if (!(j->fetching = fetch_start(world->client, &rq, ljwks_on_fetched, j))) {
        snprintf(j->error, sizeof j->error, "out of memory fetching the JWKS");
        return -1;
    }
    return 0;
}

static void ljwks_waiter_cancel(void *op) {
    ljwks_waiter *p = op;
    for (ljwks_waiter **pp = &p->jwks->waiters; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    luaL_unref(p->jwks->cache->L, LUA_REGISTRYINDEX, p->call_ref);
    free(p);
}

int ljwks_push(lua_State *L, const ljwks *j) {
    if (j->keys_ref == LUA_NOREF) return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->keys_ref);
    return 1;
}

int ljwks_keys(lua_State *L, ljwks *j, uint64_t ttl_ms) {
    uint64_t now = loop_now_ms();
    j->ttl_ms = ttl_ms;
    if ((j->keys_ref == LUA_NOREF || now - j->fetched_ms >= ttl_ms) && !j->fetching) ljwks_adopt(L, j, now);
    return ljwks_push(L, j);
}

const char *ljwks_error(const ljwks *j) {
    return j->error[0] ? j->error : "no JWKS yet";
}

int ljwks_failed_lately(ljwks *j) {
    uint64_t now = loop_now_ms();
    if (!j->fetching && !(j->failed_ms && now - j->failed_ms < LJWKS_FAILED_S * 1000)) ljwks_failed_elsewhere(j, now);
    return j->failed_ms && now - j->failed_ms < LJWKS_FAILED_S * 1000;
}

void ljwks_renew(ljwks *j, lhost *h) {
    if (loop_now_ms() - j->fetched_ms >= j->ttl_ms && !ljwks_failed_lately(j)) ljwks_fetch(j, lhost_world_of(h));
}

int ljwks_claim_refetch(ljwks *j) {
    char key[600];
    shdict_value one = { SHDICT_NUMBER, NULL, 0, 1 };
    shdict *d = ljwks_shared(j->cache);
    snprintf(key, sizeof key, "refetch %s", j->url);
    return d && shdict_add(d, key, strlen(key), &one, LJWKS_REFETCH_S * 1000, loop_now_ms()) != SHDICT_EXISTS;
}

int ljwks_wait(lua_State *L, lhost *h, ljwks *j, const char *fn, int n, ljwks_resume_fn *resume) {
    const lhost_world *world;
    lhost_waiter *w = lhost_wait_begin(h, L, fn, &world);
    if (ljwks_fetch(j, world) < 0) return -1;
    ljwks_waiter *p = malloc(sizeof *p);
    if (!p) {
        snprintf(j->error, sizeof j->error, "out of memory");
        return -1;
    }
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, -n - 2 + i);
        lua_rawseti(L, -2, i);
    }
    *p = (ljwks_waiter){ j, w, luaL_ref(L, LUA_REGISTRYINDEX), n, resume, j->waiters };
    j->waiters = p;
    return lhost_wait(w, L, ljwks_waiter_cancel, p);
}
