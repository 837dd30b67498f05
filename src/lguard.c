/* lguard.c: the standard library functions tokend replaces so that the instruction budget holds and scripts stay in their limits: coroutine resumes, finalizers, C work charged up front, the upvalues of C functions. */
#include <pthread.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "lbudget.h"
#include "lguard.h"

#define LGUARD_RESUME_STEP 128             /* instructions paid for at a resume, and the hook's period then */
#define LGUARD_HUGE ((lua_Integer)1 << 50) /* more than any budget: work that is refused whatever */

/* The functions replaced, as Lua's own libraries define them. Every state has the same ones
 * (one liblua in the process): they are read from the first state opened, under a lock,
 * and only read after. A replacement calls Lua's function directly, as a C function on its
 * own frame: no Lua value leads to it, so no script can call it past the replacement. */
enum {
    LGUARD_RESUME,
    LGUARD_WRAP,
    LGUARD_CLOSE,
    LGUARD_SETMETATABLE,
    LGUARD_GETMETATABLE,
    LGUARD_DEBUG_SETMETATABLE,
    LGUARD_DEBUG_GETMETATABLE,
    LGUARD_DEBUG_GETREGISTRY,
    LGUARD_DEBUG_GETUPVALUE,
    LGUARD_DEBUG_SETUPVALUE,
    LGUARD_DEBUG_UPVALUEID,
    LGUARD_REP,
    LGUARD_UPPER,
    LGUARD_LOWER,
    LGUARD_REVERSE,
    LGUARD_BYTE,
    LGUARD_CONCAT,
    LGUARD_UNPACK,
    LGUARD_INSERT,
    LGUARD_REMOVE,
    LGUARD_MOVE,
    LGUARD_SORT,
    LGUARD_UTF8_LEN,
    LGUARD_UTF8_CODEPOINT,
    LGUARD_WRAPPED, /* the function coroutine.wrap returns: not a library's field */
    LGUARD_COUNT
};

static lua_CFunction lguard_orig[LGUARD_COUNT];
static int lguard_ready;
static pthread_mutex_t lguard_lock = PTHREAD_MUTEX_INITIALIZER;

int lguard_budget_error(lua_State *L) {
    char why[160];
    return luaL_error(L, "%s", lbudget_why(lbudget_current(), why, sizeof why));
}

void lguard_charge(lua_State *L, size_t steps) {
    if (lbudget_charge(steps < (size_t)LGUARD_HUGE ? (long)steps : (long)LGUARD_HUGE) < 0) lguard_budget_error(L);
}

/* Raises the budget's error when the current budget is spent; returns otherwise. */
static void lguard_check(lua_State *L) {
    if (lbudget_charge(0) < 0) lguard_budget_error(L);
}

/* ---- coroutines ---- */

/* Runs Lua's function `which` on coroutine co between two looks at the budget.
 * When the hook suspended a coroutine this one resumed (it yields from the innermost
 * coroutine only), resume returns as after a yield of no values: the look after turns that
 * into the budget's error here, in the coroutine that resumed, and so on up to the
 * request's own.
 * The count hook charges a thread's instructions when its count runs down, and a new or
 * resumed coroutine may stop before that: coroutines that each run a little and resume
 * others would never be charged. So a suspended coroutine gets a short count (the hook's
 * charge follows it), and the first one is paid for here, before it runs: whatever it runs
 * has been charged. */
static int lguard_around(lua_State *L, lua_State *co, int which) {
    lua_Debug ar;
    lguard_check(L);
    if (co && co != L && (lua_status(co) != LUA_OK || !lua_getstack(co, 0, &ar))) { /* not running */
        if (lbudget_charge(LGUARD_RESUME_STEP) < 0) return lguard_budget_error(L);
        lua_sethook(co, lua_gethook(L), lua_gethookmask(L), LGUARD_RESUME_STEP);
    }
    int n = lguard_orig[which](L);
    lguard_check(L);
    return n;
}

static int lguard_resume(lua_State *L) {
    return lguard_around(L, lua_tothread(L, 1), LGUARD_RESUME);
}
static int lguard_close(lua_State *L) {
    return lguard_around(L, lua_tothread(L, 1), LGUARD_CLOSE);
}

static int lguard_wrapped(lua_State *L) {
    return lguard_around(L, lua_tothread(L, lua_upvalueindex(1)), LGUARD_WRAPPED);
}

/* coroutine.wrap(f): Lua's function, with the coroutine as upvalue 1 where Lua's own reads it. */
static int lguard_wrap(lua_State *L) {
    lguard_orig[LGUARD_WRAP](L);
    lua_getupvalue(L, -1, 1);
    lua_pushcclosure(L, lguard_wrapped, 1);
    return 1;
}

/* ---- finalizers ---- */

/* 0 when the table at idx has no __gc field (looked up raw, as Lua does), 2 when it is a C
 * function, 1 for anything else. */
static int lguard_gc_field(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_pushliteral(L, "__gc");
    int type = lua_rawget(L, idx);
    int c = lua_iscfunction(L, -1);
    lua_pop(L, 1);
    return type == LUA_TNIL ? 0 : c ? 2 : 1;
}

/* Lua marks an object for finalization when it gets a metatable with __gc, and calls
 * whatever __gc holds then, with hooks off. So no script object gets such a metatable, and
 * an object that may be marked (its metatable has __gc) keeps its own. */
static void lguard_refuse_finalizer(lua_State *L) {
    if (lua_istable(L, 2) && lguard_gc_field(L, 2))
        luaL_error(L,
                   "tokend: __gc metamethods are not available to scripts (finalizers run outside the "
                   "instruction budget)");
    if (lua_getmetatable(L, 1)) {
        int gc = lguard_gc_field(L, -1);
        lua_pop(L, 1);
        if (gc) luaL_error(L, "tokend: the metatable of an object with a finalizer cannot be changed");
    }
}

/* Replaces the result on top with nil when it is a metatable whose __gc is a C function. */
static void lguard_hide_finalizer(lua_State *L) {
    if (lua_istable(L, -1) && lguard_gc_field(L, -1) == 2) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
}

static int lguard_setmetatable(lua_State *L) {
    lguard_refuse_finalizer(L);
    return lguard_orig[LGUARD_SETMETATABLE](L);
}

static int lguard_debug_setmetatable(lua_State *L) {
    lguard_refuse_finalizer(L);
    return lguard_orig[LGUARD_DEBUG_SETMETATABLE](L);
}

static int lguard_getmetatable(lua_State *L) {
    int n = lguard_orig[LGUARD_GETMETATABLE](L);
    lguard_hide_finalizer(L);
    return n;
}

static int lguard_debug_getmetatable(lua_State *L) {
    int n = lguard_orig[LGUARD_DEBUG_GETMETATABLE](L);
    lguard_hide_finalizer(L);
    return n;
}

static int lguard_no_registry(lua_State *L) {
    return luaL_error(L,
                      "debug.getregistry is not available in tokend: the registry holds the metatables of "
                      "objects whose finalizers the instruction budget cannot stop");
}

/* The upvalues of C functions (tokend's own and the libraries') hold what scripts must not
 * touch: the original load, which takes bytecode, or a C pointer another C function
 * trusts. The debug library reaches only those of Lua functions. */
static void lguard_lua_function_only(lua_State *L, int arg) {
    luaL_checktype(L, arg, LUA_TFUNCTION);
    if (lua_iscfunction(L, arg))
        luaL_argerror(L, arg, "the upvalues of C functions are out of scripts' reach in tokend");
}

static int lguard_debug_getupvalue(lua_State *L) {
    lguard_lua_function_only(L, 1);
    return lguard_orig[LGUARD_DEBUG_GETUPVALUE](L);
}

static int lguard_debug_setupvalue(lua_State *L) {
    lguard_lua_function_only(L, 1);
    return lguard_orig[LGUARD_DEBUG_SETUPVALUE](L);
}

static int lguard_debug_upvalueid(lua_State *L) {
    lguard_lua_function_only(L, 1);
    return lguard_orig[LGUARD_DEBUG_UPVALUEID](L);
}

/* ---- C work charged up front ---- */

/* Argument i as an integer, dflt when absent or nil; *ok = 0 when it is neither (the
 * function itself raises then). */
static lua_Integer lguard_int(lua_State *L, int i, lua_Integer dflt, int *ok) {
    if (lua_isnoneornil(L, i)) return dflt;
    int isnum;
    lua_Integer v = lua_tointegerx(L, i, &isnum);
    if (!isnum) *ok = 0;
    return v;
}

/* The length of a string argument (0 for anything else: numbers are short). */
static lua_Integer lguard_len(lua_State *L, int i) {
    return lua_type(L, i) == LUA_TSTRING ? (lua_Integer)lua_rawlen(L, i) : 0;
}

/* The raw length of a table argument (0 for anything else). */
static lua_Integer lguard_rawlen(lua_State *L, int i) {
    return lua_type(L, i) == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, i) : 0;
}

/* How many positions of a string of length l arguments i, i + 1 select, as string.byte
 * reads them (the end defaults to the start, or with to_end to -1). */
static lua_Integer lguard_span(lua_State *L, lua_Integer l, int i, int to_end) {
    int ok = 1;
    lua_Integer from = lguard_int(L, i, 1, &ok);
    if (from < 0) from = from < -l ? 1 : l + from + 1;
    else if (from == 0) from = 1;
    lua_Integer to = lguard_int(L, i + 1, to_end ? -1 : from, &ok);
    if (to > l) to = l;
    else if (to < 0) to = to < -l ? 0 : l + to + 1;
    return ok && to >= from ? to - from + 1 : 0;
}

/* How many elements first..last holds (saturated). */
static lua_Integer lguard_between(lua_Integer first, lua_Integer last) {
    if (last < first) return 0;
    lua_Unsigned d = (lua_Unsigned)last - (lua_Unsigned)first;
    return d >= (lua_Unsigned)LGUARD_HUGE ? LGUARD_HUGE : (lua_Integer)d + 1;
}

/* string.rep(s, n[, sep]): n copies, one at a time. */
static lua_Integer lguard_cost_rep(lua_State *L) {
    int ok = 1;
    lua_Integer n = lguard_int(L, 2, 0, &ok), each = lguard_len(L, 1) + lguard_len(L, 3);
    if (!ok || n <= 0) return 0;
    if (n > LGUARD_HUGE || (each && n > LGUARD_HUGE / each)) return LGUARD_HUGE;
    return n + n * each / LGUARD_COPY_BYTES;
}

/* table.insert(t, pos, v) and table.remove(t, pos) move the elements after pos. */
static lua_Integer lguard_cost_shift(lua_State *L, int inserting) {
    int ok = 1;
    if (lua_gettop(L) != (inserting ? 3 : 2)) return 0;
    lua_Integer pos = lguard_int(L, 2, 0, &ok), n = lguard_rawlen(L, 1) + inserting;
    return ok && pos >= 1 && pos <= n ? n - pos : 0;
}

/* table.sort(t): about n log2 n comparisons and moves. */
static lua_Integer lguard_cost_sort(lua_State *L) {
    lua_Integer n = lguard_rawlen(L, 1), bits = 0;
    for (lua_Integer m = n; m > 1; m >>= 1) bits++;
    return n * bits;
}

/* Charges steps (saturated) to the current budget, then runs Lua's function `which`; past
 * the budget it raises instead. */
static int lguard_metered(lua_State *L, int which, lua_Integer steps) {
    if (steps > 0) lguard_charge(L, (size_t)steps);
    return lguard_orig[which](L);
}

static int lguard_rep(lua_State *L) {
    return lguard_metered(L, LGUARD_REP, lguard_cost_rep(L));
}
static int lguard_upper(lua_State *L) {
    return lguard_metered(L, LGUARD_UPPER, lguard_len(L, 1));
}
static int lguard_lower(lua_State *L) {
    return lguard_metered(L, LGUARD_LOWER, lguard_len(L, 1));
}
static int lguard_reverse(lua_State *L) {
    return lguard_metered(L, LGUARD_REVERSE, lguard_len(L, 1));
}

static int lguard_byte(lua_State *L) {
    return lguard_metered(L, LGUARD_BYTE, lguard_span(L, lguard_len(L, 1), 2, 0));
}

static int lguard_utf8_len(lua_State *L) {
    return lguard_metered(L, LGUARD_UTF8_LEN, lguard_span(L, lguard_len(L, 1), 2, 1));
}

static int lguard_utf8_codepoint(lua_State *L) {
    return lguard_metered(L, LGUARD_UTF8_CODEPOINT, lguard_span(L, lguard_len(L, 1), 2, 0));
}

/* table.concat(t, sep, i, j): the elements past the raw length are not strings (or come
 * from __index, whose Lua code the hook counts). */
static int lguard_concat(lua_State *L) {
    int ok = 1;
    lua_Integer n = lguard_rawlen(L, 1), first = lguard_int(L, 3, 1, &ok), last = lguard_int(L, 4, n, &ok);
    return lguard_metered(L, LGUARD_CONCAT, ok ? lguard_between(first, last < n ? last : n) : 0);
}

/* table.unpack(t, i, j): every value of the range goes onto the stack. */
static int lguard_unpack(lua_State *L) {
    int ok = 1;
    lua_Integer first = lguard_int(L, 2, 1, &ok), last = lguard_int(L, 3, lguard_rawlen(L, 1), &ok);
    return lguard_metered(L, LGUARD_UNPACK, ok ? lguard_between(first, last) : 0);
}

/* table.move(a1, f, e, t[, a2]) */
static int lguard_move(lua_State *L) {
    int ok = 1;
    lua_Integer first = lguard_int(L, 2, 1, &ok), last = lguard_int(L, 3, 0, &ok);
    return lguard_metered(L, LGUARD_MOVE, ok ? lguard_between(first, last) : 0);
}

static int lguard_insert(lua_State *L) {
    return lguard_metered(L, LGUARD_INSERT, lguard_cost_shift(L, 1));
}
static int lguard_remove(lua_State *L) {
    return lguard_metered(L, LGUARD_REMOVE, lguard_cost_shift(L, 0));
}
static int lguard_sort(lua_State *L) {
    return lguard_metered(L, LGUARD_SORT, lguard_cost_sort(L));
}

/* ---- opening ---- */

typedef struct lguard_entry {
    const char *lib; /* a global table, or NULL for the global table */
    const char *name;
    lua_CFunction fn; /* the replacement */
} lguard_entry;

static const lguard_entry lguard_entries[LGUARD_WRAPPED] = {
    [LGUARD_RESUME] = { "coroutine", "resume", lguard_resume },
    [LGUARD_WRAP] = { "coroutine", "wrap", lguard_wrap },
    [LGUARD_CLOSE] = { "coroutine", "close", lguard_close },
    [LGUARD_SETMETATABLE] = { NULL, "setmetatable", lguard_setmetatable },
    [LGUARD_GETMETATABLE] = { NULL, "getmetatable", lguard_getmetatable },
    [LGUARD_DEBUG_SETMETATABLE] = { "debug", "setmetatable", lguard_debug_setmetatable },
    [LGUARD_DEBUG_GETMETATABLE] = { "debug", "getmetatable", lguard_debug_getmetatable },
    [LGUARD_DEBUG_GETREGISTRY] = { "debug", "getregistry", lguard_no_registry },
    [LGUARD_DEBUG_GETUPVALUE] = { "debug", "getupvalue", lguard_debug_getupvalue },
    [LGUARD_DEBUG_SETUPVALUE] = { "debug", "setupvalue", lguard_debug_setupvalue },
    [LGUARD_DEBUG_UPVALUEID] = { "debug", "upvalueid", lguard_debug_upvalueid },
    [LGUARD_REP] = { "string", "rep", lguard_rep },
    [LGUARD_UPPER] = { "string", "upper", lguard_upper },
    [LGUARD_LOWER] = { "string", "lower", lguard_lower },
    [LGUARD_REVERSE] = { "string", "reverse", lguard_reverse },
    [LGUARD_BYTE] = { "string", "byte", lguard_byte },
    [LGUARD_CONCAT] = { "table", "concat", lguard_concat },
    [LGUARD_UNPACK] = { "table", "unpack", lguard_unpack },
    [LGUARD_INSERT] = { "table", "insert", lguard_insert },
    [LGUARD_REMOVE] = { "table", "remove", lguard_remove },
    [LGUARD_MOVE] = { "table", "move", lguard_move },
    [LGUARD_SORT] = { "table", "sort", lguard_sort },
    [LGUARD_UTF8_LEN] = { "utf8", "len", lguard_utf8_len },
    [LGUARD_UTF8_CODEPOINT] = { "utf8", "codepoint", lguard_utf8_codepoint },
};

void lguard_open(lua_State *L) {
    lua_CFunction found[LGUARD_COUNT];
    for (int i = 0; i < LGUARD_WRAPPED; i++) {
        const lguard_entry *e = &lguard_entries[i];
        if (!e->lib) lua_pushglobaltable(L);
        else if (lua_getglobal(L, e->lib) != LUA_TTABLE) luaL_error(L, "tokend: the %s library is not open", e->lib);
        lua_getfield(L, -1, e->name);
        found[i] = lua_tocfunction(L, -1);
        if (!found[i] || found[i] == e->fn) luaL_error(L, "tokend: %s is not Lua's own", e->name);
        lua_pop(L, 1);
        lua_pushcfunction(L, e->fn);
        lua_setfield(L, -2, e->name);
        lua_pop(L, 1);
    }
    lua_pushcfunction(L, found[LGUARD_WRAP]); /* Lua's wrap, for the function it returns */
    lua_pushcfunction(L, lguard_wrapped);
    lua_call(L, 1, 1);
    found[LGUARD_WRAPPED] = lua_tocfunction(L, -1);
    lua_pop(L, 1);
    pthread_mutex_lock(&lguard_lock);
    if (!lguard_ready) memcpy(lguard_orig, found, sizeof found);
    lguard_ready = 1;
    pthread_mutex_unlock(&lguard_lock);
}
