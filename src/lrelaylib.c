/* lrelaylib.c: tokend.relay: a handler hands its request over to a relayed streaming session, whose options the script sets and whose hooks run in coroutines of their own, one at a time. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llib.h"
#include "log.h"
#include "loop.h"
#include "relay.h"

#define LRELAY_CLASS "tokend.relay.session"
#define LRELAY_CODEC "tokend.relay.cjson" /* registry: the cjson.safe table the hooks' messages use */
#define LRELAY_QUEUE_MAX 64               /* hook runs waiting; past it the session ends */
#define LRELAY_QUERY_MAX 8192
#define LRELAY_MAX_SECONDS 10800 /* AssemblyAI's longest session */

extern int luaopen_cjson_safe(lua_State *L);

/* The hooks, in the order of the options' names. */
enum { LRELAY_BEGIN, LRELAY_TURN, LRELAY_MESSAGE, LRELAY_UPDATE, LRELAY_END, LRELAY_TICK, LRELAY_HOOKS };
static const char *const lrelay_hook_names[LRELAY_HOOKS] = {
    "on_begin", "on_turn", "on_message", "on_update", "on_end", "on_tick",
};
static const char *const lrelay_hook_whats[LRELAY_HOOKS] = {
    "relay on_begin", "relay on_turn", "relay on_message", "relay on_update", "relay on_end", "relay on_tick",
};

/* A hook run waiting its turn: its kind and what it gets. */
typedef struct lrelay_event {
    struct lrelay_event *next;
    int kind;
    size_t len;
    char data[]; /* the message (text), NUL-terminated */
} lrelay_event;

/* A session as the script sees it. Lives until both its session has ended (and its last
 * hook ran) and its Lua handle was collected. */
typedef struct lrelay {
    lhost *h;
    relay_hub *hub;
    relay_session *s;       /* NULL before it starts and once it ended */
    int refs[LRELAY_HOOKS]; /* registry: the hooks, LUA_NOREF for none */
    int self_ref;           /* registry: the handle (the hooks' first argument), while it runs */
    int handle;             /* the Lua handle exists */
    int live;               /* started, and its last hook has not run */
    char *query, *user;
    relay_options opts;
    char id[17];
    loop_timer tick;
    uint64_t tick_ms;
    int tick_queued;
    lrelay_event *queue, **queue_tail;
    int queued;
    int running; /* a hook runs */
    int pumping;
    int ended;         /* on_end's event is queued */
    relay_facts facts; /* the end's, strings copied below */
    char upstream_id[80], reason[WS_REASON_MAX + 1];
} lrelay;

typedef struct lrelay_handle {
    lrelay *r;
} lrelay_handle;

static void lrelay_pump(lrelay *r);

/* ---- life ---- */

static void lrelay_free(lrelay *r) {
    while (r->queue) {
        lrelay_event *e = r->queue;
        r->queue = e->next;
        free(e);
    }
    free(r->query);
    free(r->user);
    free(r);
}

/* Lets go of what the session held in the state: its hooks, its handle, the host. */
static void lrelay_release(lrelay *r) {
    lua_State *L = lhost_state(r->h);
    for (int i = 0; i < LRELAY_HOOKS; i++) {
        luaL_unref(L, LUA_REGISTRYINDEX, r->refs[i]);
        r->refs[i] = LUA_NOREF;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, r->self_ref);
    r->self_ref = LUA_NOREF;
    if (r->live) {
        r->live = 0;
        lhost_release(r->h);
    }
}

/* The handler did not return the session: it never starts. */
static void lrelay_drop(void *ud) {
    lrelay *r = ud;
    lrelay_release(r);
    if (!r->handle) lrelay_free(r);
}

static int lrelay_handle_gc(lua_State *L) {
    lrelay_handle *hd = luaL_checkudata(L, 1, LRELAY_CLASS);
    lrelay *r = hd->r;
    hd->r = NULL;
    if (!r) return 0;
    r->handle = 0;
    /* While it runs, the registry holds the handle: collected now, the state is closing
     * (the server ends its sessions before; this is the last resort). The session ends
     * on its own, without its hooks. */
    if (r->s) relay_session_forget(r->s);
    r->s = NULL;
    loop_timer_stop(lhost_world_of(r->h)->lp, &r->tick);
    lrelay_free(r);
    return 0;
}

/* ---- hooks, one at a time ---- */

/* Queues a hook run; past the bound the session ends (but on_end always runs). */
static void lrelay_enqueue(lrelay *r, int kind, const char *data, size_t len) {
    if (r->refs[kind] == LUA_NOREF) return;
    if (kind != LRELAY_END && r->queued >= LRELAY_QUEUE_MAX) {
        if (r->s) {
            log_msg(LOG_WARN, "relay %s: the script's hooks fell %d runs behind; the session closes", r->id,
                    LRELAY_QUEUE_MAX);
            relay_session_close(r->s, RELAY_HOOK_FAILED, WS_CODE_INTERNAL, "the server's hooks fell behind");
        }
        if (kind == LRELAY_UPDATE && r->s) relay_session_update(r->s, NULL, 0);
        return;
    }
    lrelay_event *e = malloc(sizeof *e + len + 1);
    if (!e) {
        if (r->s) relay_session_close(r->s, RELAY_INTERNAL, WS_CODE_INTERNAL, "out of memory");
        if (kind == LRELAY_UPDATE && r->s) relay_session_update(r->s, NULL, 0);
        return;
    }
    e->next = NULL;
    e->kind = kind;
    e->len = len;
    if (len) memcpy(e->data, data, len);
    e->data[len] = '\0';
    *r->queue_tail = e;
    r->queue_tail = &e->next;
    r->queued++;
    lrelay_pump(r);
}

/* Pushes a message: decoded (a table), or as text when it is not JSON. */
static void lrelay_push_message(lua_State *L, const char *data, size_t len) {
    lua_getfield(L, LUA_REGISTRYINDEX, LRELAY_CODEC);
    lua_getfield(L, -1, "decode");
    lua_pushlstring(L, data, len);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, data, len);
    }
    lua_remove(L, -2);
}

/* Pushes the facts of a session as a table. */
static void lrelay_push_facts(lua_State *L, const relay_facts *f) {
    lua_createtable(L, 0, 18);
#define LRELAY_SET_STRING(name, v) (lua_pushstring(L, v), lua_setfield(L, -2, name))
#define LRELAY_SET_NUMBER(name, v) (lua_pushnumber(L, v), lua_setfield(L, -2, name))
#define LRELAY_SET_INTEGER(name, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, name))
    LRELAY_SET_STRING("id", f->id);
    if (*f->upstream_id) LRELAY_SET_STRING("upstream_id", f->upstream_id);
    if (*f->user) LRELAY_SET_STRING("user", f->user);
    LRELAY_SET_NUMBER("seconds", f->seconds);
    LRELAY_SET_NUMBER("audio_seconds", f->audio_seconds);
    LRELAY_SET_INTEGER("bytes_in", f->bytes_in);
    LRELAY_SET_INTEGER("bytes_out", f->bytes_out);
    LRELAY_SET_INTEGER("messages_in", f->messages_in);
    LRELAY_SET_INTEGER("messages_out", f->messages_out);
    if (f->upstream_session_seconds >= 0 || f->upstream_audio_seconds >= 0) {
        lua_createtable(L, 0, 2);
        if (f->upstream_audio_seconds >= 0) LRELAY_SET_NUMBER("audio_duration_seconds", f->upstream_audio_seconds);
        if (f->upstream_session_seconds >= 0)
            LRELAY_SET_NUMBER("session_duration_seconds", f->upstream_session_seconds);
        lua_setfield(L, -2, "termination");
    }
    if (f->cause != RELAY_RUNNING) LRELAY_SET_STRING("cause", relay_cause_name(f->cause));
    if (f->code) LRELAY_SET_INTEGER("code", f->code);
    if (f->reason && *f->reason) LRELAY_SET_STRING("reason", f->reason);
    if (f->upstream_code) LRELAY_SET_INTEGER("upstream_code", f->upstream_code);
    if (f->upstream_status) LRELAY_SET_INTEGER("upstream_status", f->upstream_status);
    if (f->status) LRELAY_SET_INTEGER("status", f->status);
    if (f->handshake_ms >= 0) LRELAY_SET_NUMBER("handshake_ms", f->handshake_ms);
#undef LRELAY_SET_STRING
#undef LRELAY_SET_NUMBER
#undef LRELAY_SET_INTEGER
}

typedef struct lrelay_run {
    lrelay *r;
    lrelay_event *e;
} lrelay_run;

/* Pushes a hook's arguments: the session, then what its kind gets (protected). */
static int lrelay_push_args(lua_State *L, void *ud) {
    lrelay_run *run = ud;
    lrelay *r = run->r;
    lrelay_event *e = run->e;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->self_ref);
    switch (e->kind) {
    case LRELAY_BEGIN: {
        const char *id = e->data + strlen(e->data) + 1; /* "id\0message" */
        lua_pushstring(L, e->data);
        lrelay_push_message(L, id, e->len - strlen(e->data) - 1);
        (void)id;
        return 3;
    }
    case LRELAY_END: lrelay_push_facts(L, &r->facts); return 2;
    case LRELAY_TICK: return 1;
    default: lrelay_push_message(L, e->data, e->len); return 2;
    }
}

/* Encodes an update's replacement (protected: a table may not encode): 1 = the value. */
static int lrelay_encode(lua_State *L) {
    if (lua_type(L, 1) == LUA_TSTRING) return 1;
    lua_getfield(L, LUA_REGISTRYINDEX, LRELAY_CODEC);
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, 1);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) return luaL_error(L, "on_update's table cannot be sent as JSON: %s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 1;
}

/* on_update's answer: a table or a string goes to the upstream in place of the client's
 * message; nil or false (and a reason) drops it. */
static void lrelay_updated(lrelay *r, lua_State *co, int nres) {
    if (!r->s) return;
    if (nres < 1 || !(lua_istable(co, -nres) || lua_type(co, -nres) == LUA_TSTRING)) {
        const char *why = nres >= 2 && lua_type(co, -nres + 1) == LUA_TSTRING ? lua_tostring(co, -nres + 1) : "";
        log_msg(LOG_DEBUG, "relay %s: the script refused an UpdateConfiguration%s%s", r->id, *why ? ": " : "", why);
        relay_session_update(r->s, NULL, 0);
        return;
    }
    lua_State *L = lhost_state(r->h);
    lua_pushcfunction(L, lrelay_encode);
    lua_pushvalue(co, -nres);
    lua_xmove(co, L, 1);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        log_msg(LOG_ERROR, "relay %s: %s", r->id, lua_tostring(L, -1));
        lua_pop(L, 1);
        relay_session_update(r->s, NULL, 0);
        relay_session_close(r->s, RELAY_HOOK_FAILED, WS_CODE_INTERNAL, "internal error");
        return;
    }
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    relay_session_update(r->s, msg, len);
    lua_pop(L, 1);
}

/* A hook ended: a failure ends the session; the next hook runs. */
static void lrelay_hook_done(void *ud, int ok, lua_State *co, int nres) {
    lrelay_run *run = ud;
    lrelay *r = run->r;
    lrelay_event *e = run->e;
    free(run);
    r->running = 0;
    if (!ok) {
        if (r->s) {
            log_msg(LOG_WARN, "relay %s: its %s hook failed; the session closes with 1011", r->id,
                    lrelay_hook_names[e->kind]);
            if (e->kind == LRELAY_UPDATE) relay_session_update(r->s, NULL, 0);
            relay_session_close(r->s, RELAY_HOOK_FAILED, WS_CODE_INTERNAL, "internal error");
        }
    } else if (e->kind == LRELAY_UPDATE) {
        lrelay_updated(r, co, nres);
    }
    if (e->kind == LRELAY_TICK) r->tick_queued = 0;
    free(e);
    if (!r->pumping) lrelay_pump(r);
}

/* Once the session ended and its last hook ran: what it held is let go. */
static void lrelay_settle(lrelay *r) {
    if (!r->live || r->s || r->running || r->queue || !r->ended) return;
    lrelay_release(r);
    if (!r->handle) lrelay_free(r);
}

/* Runs the queued hooks, one at a time (a hook that waits holds the next ones back). */
static void lrelay_pump(lrelay *r) {
    if (r->pumping) return;
    r->pumping = 1;
    while (!r->running && r->queue) {
        lrelay_event *e = r->queue;
        r->queue = e->next;
        if (!r->queue) r->queue_tail = &r->queue;
        r->queued--;
        lrelay_run *run = malloc(sizeof *run);
        if (!run) {
            free(e);
            continue;
        }
        *run = (lrelay_run){ r, e };
        r->running = 1;
        lhost_call(r->h, r->refs[e->kind], lrelay_hook_whats[e->kind], lrelay_push_args, run, lrelay_hook_done, run);
    }
    r->pumping = 0;
    lrelay_settle(r);
}

/* ---- what the session tells ---- */

static void lrelay_on_begin(void *ud, relay_session *s, const char *id, const char *msg, size_t len) {
    lrelay *r = ud;
    (void)s;
    size_t idlen = strlen(id);
    char *both = malloc(idlen + 1 + len);
    if (!both) return;
    memcpy(both, id, idlen + 1);
    memcpy(both + idlen + 1, msg, len);
    lrelay_enqueue(r, LRELAY_BEGIN, both, idlen + 1 + len);
    free(both);
}

static void lrelay_on_turn(void *ud, relay_session *s, const char *msg, size_t len) {
    (void)s;
    lrelay_enqueue(ud, LRELAY_TURN, msg, len);
}

static void lrelay_on_message(void *ud, relay_session *s, const char *msg, size_t len) {
    (void)s;
    lrelay_enqueue(ud, LRELAY_MESSAGE, msg, len);
}

static void lrelay_on_update(void *ud, relay_session *s, const char *msg, size_t len) {
    (void)s;
    lrelay_enqueue(ud, LRELAY_UPDATE, msg, len);
}

static void lrelay_on_end(void *ud, relay_session *s, const relay_facts *f) {
    lrelay *r = ud;
    (void)s;
    r->s = NULL;
    loop_timer_stop(lhost_world_of(r->h)->lp, &r->tick);
    r->facts = *f;
    snprintf(r->upstream_id, sizeof r->upstream_id, "%s", f->upstream_id);
    snprintf(r->reason, sizeof r->reason, "%s", f->reason);
    r->facts.id = r->id;
    r->facts.upstream_id = r->upstream_id;
    r->facts.reason = r->reason;
    r->facts.user = r->user ? r->user : "";
    r->ended = 1;
    lrelay_enqueue(r, LRELAY_END, NULL, 0);
    lrelay_pump(r);
}

static void lrelay_on_tick(void *ud) {
    lrelay *r = ud;
    if (!r->s) return;
    if (!r->tick_queued) {
        r->tick_queued = 1;
        lrelay_enqueue(r, LRELAY_TICK, NULL, 0);
    }
    if (r->s) loop_timer_start(lhost_world_of(r->h)->lp, &r->tick, (long)r->tick_ms, lrelay_on_tick, r);
}

/* The handler returned the session: it starts. */
static void lrelay_start(void *ud, http_request *req) {
    lrelay *r = ud;
    static const relay_owner base = { lrelay_on_begin, lrelay_on_turn, lrelay_on_message, lrelay_on_update,
                                      lrelay_on_end };
    relay_owner owner = base;
    if (r->refs[LRELAY_UPDATE] == LUA_NOREF) owner.on_update = NULL;
    r->live = 1;
    lhost_hold(r->h);
    r->s = relay_start(r->hub, req, &r->opts, &owner, r);
    if (!r->s) { /* out of memory: answered 503 */
        r->ended = 1;
        lrelay_settle(r);
        return;
    }
    relay_facts f;
    relay_session_facts(r->s, &f);
    snprintf(r->id, sizeof r->id, "%s", f.id);
    if (r->refs[LRELAY_TICK] != LUA_NOREF)
        loop_timer_start(lhost_world_of(r->h)->lp, &r->tick, (long)r->tick_ms, lrelay_on_tick, r);
}

/* ---- the Lua API ---- */

/* Reads an integer option within [lo, hi]. */
static long lrelay_opt_integer(lua_State *L, const char *name, long dflt, long lo, long hi) {
    double v = llib_opt_number(L, 1, name, (double)dflt, "tokend.relay");
    if (v != (double)(long)v || v < (double)lo || v > (double)hi)
        luaL_error(L, "tokend.relay option %s must be an integer %ld..%ld", name, lo, hi);
    return (long)v;
}

/* Refuses options that are not ones (a typo would otherwise be ignored). */
static void lrelay_check_names(lua_State *L) {
    static const char *const known[] = { "query",        "sample_rate", "encoding",     "max_seconds",
                                         "idle_seconds", "user",        "tick_seconds", NULL };
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int ok = 0;
        for (size_t i = 0; k && known[i] && !ok; i++) ok = strcmp(k, known[i]) == 0;
        for (size_t i = 0; k && i < LRELAY_HOOKS && !ok; i++) ok = strcmp(k, lrelay_hook_names[i]) == 0;
        if (!ok) luaL_error(L, "tokend.relay: unknown option %s", k ? k : luaL_typename(L, -1));
    }
}

/* The upstream's query: what the script built, with its own names only. */
static const char *lrelay_check_query(lua_State *L) {
    size_t len;
    lua_getfield(L, 1, "query");
    const char *q = lua_tolstring(L, -1, &len);
    if (!q || lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "tokend.relay option query must be a string");
    if (len > LRELAY_QUERY_MAX) luaL_error(L, "tokend.relay option query is longer than %d bytes", LRELAY_QUERY_MAX);
    for (size_t i = 0; i < len; i++)
        if (q[i] <= ' ' || q[i] >= 0x7f || q[i] == '#')
            luaL_error(L, "tokend.relay option query holds a character a URL's query cannot (escape it)");
    static const char *const reserved[] = { "token", "sample_rate", "encoding", NULL };
    for (const char *p = q; *p; p += strcspn(p, "&"), p += *p == '&') {
        for (size_t i = 0; reserved[i]; i++) {
            size_t n = strlen(reserved[i]);
            if (strncmp(p, reserved[i], n) == 0 && (p[n] == '=' || p[n] == '&' || !p[n]))
                luaL_error(L, "tokend.relay option query must not carry %s (%s)", reserved[i],
                           i ? "the options sample_rate and encoding set it" : "the relay uses the server's key");
        }
    }
    lua_pop(L, 1); /* the options table keeps it alive */
    return q;
}

/* tokend.relay{query, sample_rate = 16000, encoding = "pcm_s16le", max_seconds = 10800,
 * idle_seconds = 30, user, tick_seconds = 10, on_begin, on_turn, on_message, on_update,
 * on_end, on_tick} -> session: the handler returns it to hand its request over. */
static int lrelay_new(lua_State *L) {
    lhost *h = LLIB_HOST(L);
    const lhost_world *w = lhost_world_of(h);
    luaL_checktype(L, 1, LUA_TTABLE);
    lrelay_check_names(L);
    const char *query = lrelay_check_query(L);
    long rate = lrelay_opt_integer(L, "sample_rate", 16000, 8000, 48000);
    long max_seconds = lrelay_opt_integer(L, "max_seconds", LRELAY_MAX_SECONDS, 1, LRELAY_MAX_SECONDS);
    long idle = lrelay_opt_integer(L, "idle_seconds", 30, 0, 3600);
    double tick = llib_opt_number(L, 1, "tick_seconds", 10, "tokend.relay");
    luaL_argcheck(L, tick >= 1 && tick <= 86400, 1, "tick_seconds must be 1..86400");
    const char *encoding = llib_field_string(L, 1, NULL, "encoding", NULL);
    lua_getfield(L, 1, "encoding");
    if (!lua_isnil(L, -1) && (!encoding || (strcmp(encoding, "pcm_s16le") != 0 && strcmp(encoding, "pcm_mulaw") != 0)))
        luaL_error(L, "tokend.relay option encoding must be \"pcm_s16le\" or \"pcm_mulaw\"");
    lua_pop(L, 1);
    size_t userlen = 0;
    const char *user = llib_field_string(L, 1, NULL, "user", &userlen);
    lua_getfield(L, 1, "user");
    if (!lua_isnil(L, -1) && (!user || userlen > 120))
        luaL_error(L, "tokend.relay option user must be a string of at most 120 bytes");
    lua_pop(L, 1);
    for (int i = 0; i < LRELAY_HOOKS; i++) {
        int t = lua_getfield(L, 1, lrelay_hook_names[i]);
        if (t != LUA_TNIL && t != LUA_TFUNCTION)
            luaL_error(L, "tokend.relay option %s must be a function", lrelay_hook_names[i]);
        lua_pop(L, 1);
    }
    if (!w->relay) return luaL_error(L, "tokend.relay needs a running server");
    lrelay_handle *hd = lua_newuserdatauv(L, sizeof *hd, 0);
    hd->r = NULL;
    luaL_setmetatable(L, LRELAY_CLASS);
    lrelay *r = calloc(1, sizeof *r);
    if (!r || !(r->query = strdup(query)) || (user && !(r->user = strdup(user)))) {
        if (r) lrelay_free(r);
        return luaL_error(L, "out of memory");
    }
    r->h = h;
    r->hub = w->relay;
    r->handle = 1;
    r->self_ref = LUA_NOREF;
    r->queue_tail = &r->queue;
    r->tick_ms = (uint64_t)(tick * 1000);
    r->opts = (relay_options){ .query = r->query,
                               .sample_rate = rate,
                               .mulaw = encoding && strcmp(encoding, "pcm_mulaw") == 0,
                               .max_seconds = max_seconds,
                               .idle_seconds = idle,
                               .user = r->user };
    for (int i = 0; i < LRELAY_HOOKS; i++) {
        lua_getfield(L, 1, lrelay_hook_names[i]);
        r->refs[i] = lua_isnil(L, -1) ? (lua_pop(L, 1), LUA_NOREF) : luaL_ref(L, LUA_REGISTRYINDEX);
    }
    r->opts.every_message = r->refs[LRELAY_MESSAGE] != LUA_NOREF;
    hd->r = r;
    lua_pushvalue(L, -1);
    r->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lhost_request_takeover(h, L, -1, lrelay_start, lrelay_drop, r);
    return 1;
}

static lrelay *lrelay_check(lua_State *L) {
    lrelay_handle *hd = luaL_checkudata(L, 1, LRELAY_CLASS);
    return hd->r;
}

/* Whether s holds valid UTF-8 (a close reason must). */
static int lrelay_utf8(const char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!n || i + n > len || (n == 2 && c < 0xC2) || (n == 4 && c > 0xF4)) return 0;
        for (size_t k = 1; k < n; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80) return 0;
        i += n;
    }
    return 1;
}

/* session:close([code = 1000[, reason]]) -> true | nil, err */
static int lrelay_close(lua_State *L) {
    lrelay *r = lrelay_check(L);
    lua_Integer code = luaL_optinteger(L, 2, WS_CODE_NORMAL);
    size_t len = 0;
    const char *reason = luaL_optlstring(L, 3, "", &len);
    luaL_argcheck(L,
                  code == 1000 || code == 1001 || code == 1008 || code == 1011 || code == 1013 ||
                          (code >= 3000 && code <= 4999),
                  2, "a close code is 1000, 1001, 1008, 1011, 1013 or 3000..4999");
    luaL_argcheck(L, len <= WS_REASON_MAX && lrelay_utf8(reason, len), 3, "a reason is at most 123 bytes of UTF-8");
    if (!r || !r->s) return llib_fail(L, "the session has ended");
    relay_session_close(r->s, RELAY_SCRIPT, (int)code, reason);
    lua_pushboolean(L, 1);
    return 1;
}

/* session:stats() -> what the session did so far (the facts on_end gets, without its end) */
static int lrelay_stats(lua_State *L) {
    lrelay *r = lrelay_check(L);
    if (r && r->s) {
        relay_facts f;
        relay_session_facts(r->s, &f);
        lrelay_push_facts(L, &f);
    } else if (r && r->ended) {
        lrelay_push_facts(L, &r->facts);
    } else {
        lua_newtable(L);
    }
    return 1;
}

/* session.id, session.user, session.upstream_id, and the methods. */
static int lrelay_index(lua_State *L) {
    lrelay *r = lrelay_check(L);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "id") == 0) lua_pushstring(L, r && *r->id ? r->id : NULL);
    else if (strcmp(k, "user") == 0) lua_pushstring(L, r ? r->user : NULL);
    else if (strcmp(k, "upstream_id") == 0) {
        relay_facts f;
        if (r && r->s) relay_session_facts(r->s, &f);
        lua_pushstring(L,
                       r && r->s                      ? (*f.upstream_id ? f.upstream_id : NULL)
                               : r && *r->upstream_id ? r->upstream_id
                                                      : NULL);
    } else if (strcmp(k, "close") == 0) lua_pushcfunction(L, lrelay_close);
    else if (strcmp(k, "stats") == 0) lua_pushcfunction(L, lrelay_stats);
    else lua_pushnil(L);
    return 1;
}

void lrelaylib_open(lua_State *L, lhost *h) {
    static const luaL_Reg fns[] = { { "relay", lrelay_new }, { NULL, NULL } };
    if (luaL_newmetatable(L, LRELAY_CLASS)) {
        lua_pushcfunction(L, lrelay_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, lrelay_handle_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, LRELAY_CODEC) == LUA_TNIL) {
        lua_pushcfunction(L, luaopen_cjson_safe);
        lua_call(L, 0, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, LRELAY_CODEC);
    }
    lua_pop(L, 1);
    llib_register(L, h, fns);
}
