/* ltimerlib.c: tokend.timer.every and tokend.timer.after: script functions run on a schedule, each in a coroutine of its own. */
#include <math.h>
#include <stdlib.h>

#include "list.h"
#include "llib.h"
#include "log.h"
#include "loop.h"

#define LTIMER_HANDLE "tokend.timer"
#define LTIMER_LIST "tokend.timers"
#define LTIMER_MAX_SECONDS (365.0 * 86400)

/* A timer. It lives while its schedule holds it (from creation until it cannot fire again
 * and no run is going on) and while its Lua handle does; the last one to let go frees it. */
typedef struct ltimer {
    struct ltimer_list *list; /* NULL once the state's list was collected */
    loop_timer t;
    loop *lp;
    int fn_ref;           /* registry: the function */
    uint64_t interval_ms; /* every: the period; after: 0 */
    uint64_t next_due_ms; /* every: the schedule, kept whatever a run takes */
    int active;           /* it may fire again */
    int running;          /* a run has not ended */
    int scheduled;        /* the schedule's hold */
    int handle;           /* the handle's hold */
    list_node link;       /* in its list's timers */
} ltimer;

/* The timers of one state while it serves: stopped when its host retires (or, in the Lua
 * module, stops serving); freed with the state. */
typedef struct ltimer_list {
    lhost *h;
    list_node timers;
    int stopped;
} ltimer_list;

typedef struct ltimer_handle {
    ltimer *timer;
} ltimer_handle;

static void ltimer_free_if_unheld(ltimer *t) {
    if (t->scheduled || t->handle) return;
    if (t->list) list_remove(&t->link);
    free(t);
}

/* The timer will not fire again: the schedule lets go once no run is left. */
static void ltimer_deactivate(ltimer *t) {
    t->active = 0;
    loop_timer_stop(t->lp, &t->t);
    if (t->running || !t->scheduled) return;
    t->scheduled = 0;
    luaL_unref(lhost_state(t->list->h), LUA_REGISTRYINDEX, t->fn_ref);
    ltimer_free_if_unheld(t);
}

static void ltimer_fire(void *ud);

static void ltimer_arm(ltimer *t) {
    uint64_t now = loop_now_ms();
    long after = t->next_due_ms > now ? (long)(t->next_due_ms - now) : 0;
    if (loop_timer_start(t->lp, &t->t, after, ltimer_fire, t) < 0) {
        log_msg(LOG_ERROR, "timer: out of memory; this timer stops");
        ltimer_deactivate(t);
    }
}

static void ltimer_done(void *ud, int ok) {
    ltimer *t = ud;
    (void)ok; /* a failed run was logged; an every timer keeps its schedule */
    t->running = 0;
    if (!t->active) ltimer_deactivate(t);
}

static void ltimer_fire(void *ud) {
    ltimer *t = ud;
    if (t->interval_ms) { /* the next run on the schedule, whatever this one takes */
        /* This run takes its slot even when the loop fired it a little early (its clock is
         * read once per dispatch round), so that a slot never runs twice; missed slots are
         * skipped, not caught up. */
        uint64_t now = loop_now_ms();
        do t->next_due_ms += t->interval_ms;
        while (t->next_due_ms <= now);
        ltimer_arm(t);
    } else {
        t->active = 0;
    }
    if (t->running) {
        log_msg(LOG_WARN, "timer: the previous run is still going; this one is skipped");
        return;
    }
    t->running = 1;
    if (lhost_spawn(t->list->h, t->fn_ref, "timer", ltimer_done, t) < 0) ltimer_done(t, 0);
}

/* The host retires or stops serving: its timers stop. */
static void ltimer_on_retire(void *ud) {
    ltimer_list *list = ud;
    list->stopped = 1;
    for (list_node *n = list_first(&list->timers), *next; n; n = next) {
        ltimer *t = list_entry(n, ltimer, link);
        next = list_next(&list->timers, n);
        if (t->active) ltimer_deactivate(t);
    }
}

/* The state closes: the timers no handle holds go now, the others with their handle. */
static int ltimer_list_gc(lua_State *L) {
    ltimer_list *list = lua_touserdata(L, 1);
    for (list_node *n; (n = list_first(&list->timers));) {
        ltimer *t = list_entry(n, ltimer, link);
        list_remove(n);
        loop_timer_stop(t->lp, &t->t);
        t->list = NULL;
        t->scheduled = 0;
        ltimer_free_if_unheld(t);
    }
    return 0;
}

/* The timer list of h's state while it serves, made with its first timer. */
static ltimer_list *ltimer_list_of(lua_State *L, lhost *h) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, LTIMER_LIST) == LUA_TUSERDATA) {
        ltimer_list *list = lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (list->h == h && !list->stopped) return list;
    } else {
        lua_pop(L, 1);
    }
    ltimer_list *list = lua_newuserdatauv(L, sizeof *list, 0);
    list->h = h;
    list_init(&list->timers);
    list->stopped = 0;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, ltimer_list_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, LTIMER_LIST);
    lhost_on_retire(h, ltimer_on_retire, list);
    return list;
}

/* Creates a timer running the function at index 2 after seconds (every: then each
 * seconds); pushes its handle. */
static int ltimer_new(lua_State *L, int every) {
    lhost *h = LLIB_HOST(L);
    const lhost_world *w = lhost_world_of(h);
    lua_Number seconds = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_argcheck(L, every ? seconds >= 0.001 : seconds >= 0, 1,
                  every ? "the period is at least 0.001 s" : "the delay is 0 s or more");
    luaL_argcheck(L, seconds <= LTIMER_MAX_SECONDS, 1, "at most a year");
    int all_workers = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "all_workers");
        all_workers = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if (!w->serves)
        return luaL_error(
                L, "tokend.timer needs a running server: in the Lua module, create timers after tokend.server{}");
    if (lhost_retired(h)) return luaL_error(L, "tokend.timer: this script was replaced by a reload");
    ltimer_list *list = ltimer_list_of(L, h);
    ltimer_handle *handle = lua_newuserdatauv(L, sizeof *handle, 0);
    handle->timer = NULL;
    luaL_setmetatable(L, LTIMER_HANDLE);
    ltimer *t = calloc(1, sizeof *t);
    if (!t) return luaL_error(L, "out of memory");
    t->list = list;
    t->lp = w->lp;
    t->fn_ref = LUA_NOREF;
    t->interval_ms = every ? (uint64_t)llround(seconds * 1000) : 0;
    t->next_due_ms = loop_now_ms() + (uint64_t)llround(seconds * 1000);
    list_insert_after(&list->timers, &t->link);
    t->handle = 1;
    handle->timer = t;
    /* Every worker loads the script: a timer it defines runs in one of them, unless asked
     * otherwise. */
    if (lhost_loading(h) && !all_workers && w->info->worker != 1) return 1;
    lua_pushvalue(L, 2);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->scheduled = t->active = 1;
    ltimer_arm(t);
    return 1;
}

/* tokend.timer.every(seconds, fn[, {all_workers = false}]) -> handle */
static int ltimer_every(lua_State *L) {
    return ltimer_new(L, 1);
}

/* tokend.timer.after(seconds, fn[, {all_workers = false}]) -> handle */
static int ltimer_after(lua_State *L) {
    return ltimer_new(L, 0);
}

/* handle:cancel(): no more runs (one going on finishes). */
static int ltimer_cancel(lua_State *L) {
    ltimer_handle *handle = luaL_checkudata(L, 1, LTIMER_HANDLE);
    ltimer *t = handle->timer;
    if (t && t->list && t->active) ltimer_deactivate(t);
    return 0;
}

static int ltimer_handle_gc(lua_State *L) {
    ltimer_handle *handle = luaL_checkudata(L, 1, LTIMER_HANDLE);
    ltimer *t = handle->timer;
    if (!t) return 0;
    handle->timer = NULL;
    t->handle = 0;
    ltimer_free_if_unheld(t);
    return 0;
}

void ltimerlib_open(lua_State *L, lhost *h) {
    static const luaL_Reg methods[] = { { "cancel", ltimer_cancel }, { NULL, NULL } };
    static const luaL_Reg fns[] = { { "every", ltimer_every }, { "after", ltimer_after }, { NULL, NULL } };
    llib_class(L, LTIMER_HANDLE, methods, ltimer_handle_gc);
    lua_newtable(L);
    llib_register(L, h, fns);
    lua_setfield(L, -2, "timer");
}
