/* lpattern.c: string.find, match, gmatch and gsub with Lua 5.4's patterns, counting their steps against the instruction budget. */
#define _GNU_SOURCE
#include <ctype.h>
#include <setjmp.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "lpattern.h"
#include "lbudget.h"

/* Lua's pattern matcher backtracks: "(.-)(.-)(.-)x" on a long subject takes forever in
 * one C call, where the count hook never fires. This one is written to the same rules
 * (Lua 5.4 manual, 6.4.1) and charges every step of its search to the budget of the code
 * that called it; past the budget it raises the budget's error. */

#define LPATTERN_ESC '%'
#define LPATTERN_SPECIALS "^$*+?.([%-"
#define LPATTERN_MAX_CAPTURES 32 /* LUA_MAXCAPTURES */
#define LPATTERN_MAX_DEPTH 200   /* nested matching calls, as Lua's MAXCCALLS */
#define LPATTERN_CHARGE 1024     /* steps counted before they are charged at once */
#define LPATTERN_UNFINISHED (-1) /* a capture whose ')' is not matched yet */
#define LPATTERN_POSITION (-2)   /* a position capture: () */

typedef struct lpattern_state {
    const char *src_init, *src_end; /* the subject */
    const char *p_end;              /* end of the pattern */
    lua_State *L;                   /* NULL for a search from C: errors jump to fail */
    jmp_buf *fail;
    long steps_left; /* a search from C: its own limit */
    int depth;       /* matching calls left before "too complex" */
    int level;       /* captures open or closed */
    long steps;      /* steps not charged yet */
    struct {
        const char *init;
        ptrdiff_t len;
    } capture[LPATTERN_MAX_CAPTURES];
} lpattern_state;

static const char *lpattern_match(lpattern_state *ms, const char *s, const char *p);

/* Ends the search with an error: a Lua error, or, from C, a jump out of it. */
static void lpattern_error(lpattern_state *ms, const char *fmt, int n) {
    if (!ms->L) longjmp(*ms->fail, 1);
    luaL_error(ms->L, fmt, n);
}

/* Counts one step; every LPATTERN_CHARGE of them go to the budget (from C: its limit). */
static void lpattern_step(lpattern_state *ms) {
    if (++ms->steps < LPATTERN_CHARGE) return;
    ms->steps = 0;
    if (!ms->L ? (ms->steps_left -= LPATTERN_CHARGE) < 0 : lbudget_charge(LPATTERN_CHARGE) < 0)
        lpattern_error(ms, LBUDGET_ERROR " (in a string pattern search)", 0);
}

static void lpattern_prepare(lpattern_state *ms, lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
    ms->L = L;
    ms->src_init = s;
    ms->src_end = s + ls;
    ms->p_end = p + lp;
    ms->steps = 0;
}

/* Before each attempt at a new position. */
static void lpattern_restart(lpattern_state *ms) {
    ms->level = 0;
    ms->depth = LPATTERN_MAX_DEPTH;
}

/* Whether c belongs to the class %cl (a letter: its class, its complement in upper case;
 * anything else: itself). */
static int lpattern_class(int c, int cl) {
    int in;
    switch (cl | 0x20) { /* tolower for the ASCII letters below; no other byte maps onto them */
    case 'a': in = isalpha(c); break;
    case 'c': in = iscntrl(c); break;
    case 'd': in = isdigit(c); break;
    case 'g': in = isgraph(c); break;
    case 'l': in = islower(c); break;
    case 'p': in = ispunct(c); break;
    case 's': in = isspace(c); break;
    case 'u': in = isupper(c); break;
    case 'w': in = isalnum(c); break;
    case 'x': in = isxdigit(c); break;
    case 'z': in = c == 0; break; /* NUL: deprecated in Lua 5.2, still in 5.4's lstrlib.c */
    default: return cl == c;
    }
    return cl <= 'Z' ? !in : in != 0; /* cl is one of the letters above */
}

/* Whether c is in the set p ('[') .. close (its ']'). */
static int lpattern_in_set(int c, const char *p, const char *close) {
    int found = 1;
    if (p[1] == '^') {
        found = 0;
        p++;
    }
    while (++p < close) {
        if (*p == LPATTERN_ESC) {
            p++;
            if (lpattern_class(c, (unsigned char)*p)) return found;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2]) return found;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return found;
        }
    }
    return !found;
}

/* The end of the single-character class at p. */
static const char *lpattern_class_end(lpattern_state *ms, const char *p) {
    switch (*p++) {
    case LPATTERN_ESC:
        if (p == ms->p_end) lpattern_error(ms, "malformed pattern (ends with '%%')", 0);
        return p + 1;
    case '[':
        if (*p == '^') p++;
        do { /* the first character after '[' or '[^' is in the set, even a ']' */
            if (p == ms->p_end) lpattern_error(ms, "malformed pattern (missing ']')", 0);
            if (*(p++) == LPATTERN_ESC && p < ms->p_end) p++;
        } while (*p != ']');
        return p + 1;
    default: return p;
    }
}

/* Whether the subject character at s matches the class p .. ep. */
static int lpattern_single(lpattern_state *ms, const char *s, const char *p, const char *ep) {
    if (s >= ms->src_end) return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case LPATTERN_ESC: return lpattern_class(c, (unsigned char)p[1]);
    case '[': return lpattern_in_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* %bxy at p: a balanced run from x to y. */
static const char *lpattern_balance(lpattern_state *ms, const char *s, const char *p) {
    if (p >= ms->p_end - 1) lpattern_error(ms, "malformed pattern (missing arguments to '%%b')", 0);
    if (s >= ms->src_end || *s != *p) return NULL;
    int open = *p, close = p[1], depth = 1;
    while (++s < ms->src_end) {
        lpattern_step(ms);
        if (*s == close) {
            if (--depth == 0) return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* The longest run of the class, then as few as needed for the rest to match. */
static const char *lpattern_max_expand(lpattern_state *ms, const char *s, const char *p, const char *ep) {
    ptrdiff_t i = 0;
    while (lpattern_single(ms, s + i, p, ep)) {
        lpattern_step(ms);
        i++;
    }
    for (; i >= 0; i--) {
        const char *res = lpattern_match(ms, s + i, ep + 1);
        if (res) return res;
    }
    return NULL;
}

/* The shortest run of the class for which the rest matches. */
static const char *lpattern_min_expand(lpattern_state *ms, const char *s, const char *p, const char *ep) {
    for (;;) {
        const char *res = lpattern_match(ms, s, ep + 1);
        if (res) return res;
        if (!lpattern_single(ms, s, p, ep)) return NULL;
        s++;
    }
}

static const char *lpattern_open_capture(lpattern_state *ms, const char *s, const char *p, ptrdiff_t what) {
    if (ms->level >= LPATTERN_MAX_CAPTURES) lpattern_error(ms, "too many captures", 0);
    ms->capture[ms->level].init = s;
    ms->capture[ms->level].len = what;
    ms->level++;
    const char *res = lpattern_match(ms, s, p);
    if (!res) ms->level--;
    return res;
}

static const char *lpattern_close_capture(lpattern_state *ms, const char *s, const char *p) {
    int l = ms->level - 1;
    while (l >= 0 && ms->capture[l].len != LPATTERN_UNFINISHED) l--;
    if (l < 0) lpattern_error(ms, "invalid pattern capture", 0);
    ms->capture[l].len = s - ms->capture[l].init;
    const char *res = lpattern_match(ms, s, p);
    if (!res) ms->capture[l].len = LPATTERN_UNFINISHED;
    return res;
}

/* %1..%9 at p: the same text as that capture. */
static const char *lpattern_back_reference(lpattern_state *ms, const char *s, int digit) {
    int l = digit - '1';
    if (l < 0 || l >= ms->level || ms->capture[l].len == LPATTERN_UNFINISHED)
        lpattern_error(ms, "invalid capture index %%%d", l + 1);
    size_t len = (size_t)ms->capture[l].len;
    if ((size_t)(ms->src_end - s) >= len && memcmp(ms->capture[l].init, s, len) == 0) return s + len;
    return NULL;
}

/* Matches the pattern from p against the subject from s; returns the end of the match or
 * NULL. Items that end the pattern's walk loop here rather than recursing. */
static const char *lpattern_match(lpattern_state *ms, const char *s, const char *p) {
    if (ms->depth-- == 0) lpattern_error(ms, "pattern too complex", 0);
    for (;;) {
        lpattern_step(ms);
        if (p == ms->p_end) break;
        if (*p == '(') {
            s = p[1] == ')' ? lpattern_open_capture(ms, s, p + 2, LPATTERN_POSITION)
                            : lpattern_open_capture(ms, s, p + 1, LPATTERN_UNFINISHED);
            break;
        }
        if (*p == ')') {
            s = lpattern_close_capture(ms, s, p + 1);
            break;
        }
        if (*p == '$' && p + 1 == ms->p_end) {
            if (s != ms->src_end) s = NULL;
            break;
        }
        if (*p == LPATTERN_ESC && p[1] == 'b') {
            if (!(s = lpattern_balance(ms, s, p + 2))) break;
            p += 4;
            continue;
        }
        if (*p == LPATTERN_ESC && p[1] == 'f') {
            p += 2;
            if (*p != '[') lpattern_error(ms, "missing '[' after '%%f' in pattern", 0);
            const char *ep = lpattern_class_end(ms, p);
            int before = s == ms->src_init ? '\0' : (unsigned char)s[-1];
            int here = s < ms->src_end ? (unsigned char)*s : '\0';
            if (!lpattern_in_set(before, p, ep - 1) && lpattern_in_set(here, p, ep - 1)) {
                p = ep;
                continue;
            }
            s = NULL;
            break;
        }
        if (*p == LPATTERN_ESC && isdigit((unsigned char)p[1])) {
            if (!(s = lpattern_back_reference(ms, s, (unsigned char)p[1]))) break;
            p += 2;
            continue;
        }
        const char *ep = lpattern_class_end(ms, p);
        if (!lpattern_single(ms, s, p, ep)) {
            if (*ep == '*' || *ep == '?' || *ep == '-') { /* the item may match nothing */
                p = ep + 1;
                continue;
            }
            s = NULL;
            break;
        }
        if (*ep == '?') {
            const char *res = lpattern_match(ms, s + 1, ep + 1);
            if (res) {
                s = res;
                break;
            }
            p = ep + 1;
            continue;
        }
        if (*ep == '+') {
            s = lpattern_max_expand(ms, s + 1, p, ep);
            break;
        }
        if (*ep == '*') {
            s = lpattern_max_expand(ms, s, p, ep);
            break;
        }
        if (*ep == '-') {
            s = lpattern_min_expand(ms, s, p, ep);
            break;
        }
        s++;
        p = ep;
    }
    ms->depth++;
    return s;
}

/* Capture i of a match s..e: pushes a position capture and returns LPATTERN_POSITION, or
 * sets *cap and returns its length. Capture 0 of a pattern without captures is the match. */
static ptrdiff_t lpattern_capture(lpattern_state *ms, int i, const char *s, const char *e, const char **cap) {
    if (i >= ms->level) {
        if (i != 0) lpattern_error(ms, "invalid capture index %%%d", i + 1);
        *cap = s;
        return e - s;
    }
    ptrdiff_t len = ms->capture[i].len;
    *cap = ms->capture[i].init;
    if (len == LPATTERN_UNFINISHED) lpattern_error(ms, "unfinished capture", 0);
    if (len == LPATTERN_POSITION) lua_pushinteger(ms->L, (ms->capture[i].init - ms->src_init) + 1);
    return len;
}

static void lpattern_push_capture(lpattern_state *ms, int i, const char *s, const char *e) {
    const char *cap;
    ptrdiff_t len = lpattern_capture(ms, i, s, e, &cap);
    if (len != LPATTERN_POSITION) lua_pushlstring(ms->L, cap, (size_t)len);
}

/* Pushes the captures of a match (or the match itself, when s is not NULL and there are
 * none). Returns their number. */
static int lpattern_push_captures(lpattern_state *ms, const char *s, const char *e) {
    int n = ms->level == 0 && s ? 1 : ms->level;
    luaL_checkstack(ms->L, n, "too many captures");
    for (int i = 0; i < n; i++) lpattern_push_capture(ms, i, s, e);
    return n;
}

/* A start position as string.find takes it (negative: from the end), 0-based. */
static size_t lpattern_start(lua_Integer pos, size_t len) {
    if (pos > 0) return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len) return 0;
    return len + (size_t)pos;
}

static int lpattern_has_specials(const char *p, size_t lp) {
    for (size_t i = 0; i < lp; i++)
        if (p[i] && strchr(LPATTERN_SPECIALS, p[i])) return 1;
    return 0;
}

/* string.find (find 1) and string.match (find 0). */
static int lpattern_find_or_match(lua_State *L, int find) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = lpattern_start(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || !lpattern_has_specials(p, lp))) {
        if (lbudget_charge((long)((ls - init) / 64)) < 0) /* memmem is linear */
            return luaL_error(L, LBUDGET_ERROR " (in a string pattern search)");
        const char *hit = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
        if (hit) {
            lua_pushinteger(L, (hit - s) + 1);
            lua_pushinteger(L, (lua_Integer)((hit - s) + (ptrdiff_t)lp));
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    lpattern_state ms;
    int anchor = *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    lpattern_prepare(&ms, L, s, ls, p, lp);
    const char *from = s + init;
    do {
        lpattern_restart(&ms);
        const char *e = lpattern_match(&ms, from, p);
        if (e) {
            if (!find) return lpattern_push_captures(&ms, from, e);
            lua_pushinteger(L, (from - s) + 1);
            lua_pushinteger(L, e - s);
            return lpattern_push_captures(&ms, NULL, NULL) + 2;
        }
    } while (from++ < ms.src_end && !anchor);
    luaL_pushfail(L);
    return 1;
}

/* lpattern_search's loop over the start positions, under its jump buffer. A match with a
 * capture left open is an error, as string.find reports it. */
static int lpattern_search_from(lpattern_state *ms, const char *s, const char *p, int anchor) {
    const char *from = s;
    do {
        lpattern_restart(ms);
        if (lpattern_match(ms, from, p)) {
            for (int i = 0; i < ms->level; i++)
                if (ms->capture[i].len == LPATTERN_UNFINISHED) lpattern_error(ms, "unfinished capture", 0);
            return 1;
        }
    } while (from++ < ms->src_end && !anchor);
    return 0;
}

int lpattern_search(const char *s, size_t ls, const char *p, size_t lp, long max_steps) {
    jmp_buf fail;
    lpattern_state ms;
    int anchor = lp > 0 && *p == '^';
    if (!lpattern_has_specials(p, lp)) return lp == 0 || memmem(s, ls, p, lp) != NULL; /* as string.find */
    memset(&ms, 0, sizeof ms);
    lpattern_prepare(&ms, NULL, s, ls, p + anchor, lp - (size_t)anchor);
    ms.fail = &fail;
    ms.steps_left = max_steps;
    if (setjmp(fail)) return -1;
    return lpattern_search_from(&ms, s, p + anchor, anchor);
}

static int lpattern_find(lua_State *L) {
    return lpattern_find_or_match(L, 1);
}
static int lpattern_match_fn(lua_State *L) {
    return lpattern_find_or_match(L, 0);
}

/* The iterator state of string.gmatch, kept in a userdata. */
typedef struct lpattern_iter {
    const char *src; /* where the next search starts */
    const char *p;
    const char *lastmatch; /* end of the last match: an empty match may not end there again */
    lpattern_state ms;
} lpattern_iter;

static int lpattern_gmatch_next(lua_State *L) {
    lpattern_iter *it = lua_touserdata(L, lua_upvalueindex(3));
    it->ms.L = L;
    for (const char *src = it->src; src <= it->ms.src_end; src++) {
        lpattern_restart(&it->ms);
        const char *e = lpattern_match(&it->ms, src, it->p);
        if (e && e != it->lastmatch) {
            it->src = it->lastmatch = e;
            return lpattern_push_captures(&it->ms, src, e);
        }
    }
    return 0;
}

/* string.gmatch(s, pattern [, init]) */
static int lpattern_gmatch(lua_State *L) {
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = lpattern_start(luaL_optinteger(L, 3, 1), ls);
    lua_settop(L, 2); /* the subject and the pattern stay alive as upvalues */
    lpattern_iter *it = lua_newuserdatauv(L, sizeof *it, 0);
    if (init > ls) init = ls + 1;
    lpattern_prepare(&it->ms, L, s, ls, p, lp);
    it->src = s + init;
    it->p = p;
    it->lastmatch = NULL;
    lua_pushcclosure(L, lpattern_gmatch_next, 3);
    return 1;
}

/* Appends the replacement string (argument 3, with %0..%9 and %%) for a match s..e. */
static void lpattern_add_string(lpattern_state *ms, luaL_Buffer *b, const char *s, const char *e) {
    size_t l;
    lua_State *L = ms->L;
    const char *news = lua_tolstring(L, 3, &l), *p;
    while ((p = memchr(news, LPATTERN_ESC, l)) != NULL) {
        luaL_addlstring(b, news, (size_t)(p - news));
        p++;
        if (*p == LPATTERN_ESC) {
            luaL_addchar(b, *p);
        } else if (*p == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)*p)) {
            const char *cap;
            ptrdiff_t len = lpattern_capture(ms, *p - '1', s, e, &cap);
            if (len == LPATTERN_POSITION) luaL_addvalue(b);
            else luaL_addlstring(b, cap, (size_t)len);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", LPATTERN_ESC);
        }
        l -= (size_t)(p + 1 - news);
        news = p + 1;
    }
    luaL_addlstring(b, news, l);
}

/* Appends the replacement of a match s..e; returns 1 when it changed the text. */
static int lpattern_add_value(lpattern_state *ms, luaL_Buffer *b, const char *s, const char *e, int tr) {
    lua_State *L = ms->L;
    if (tr == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = lpattern_push_captures(ms, s, e);
        lua_call(L, n, 1);
    } else if (tr == LUA_TTABLE) {
        lpattern_push_capture(ms, 0, s, e);
        lua_gettable(L, 3);
    } else {
        lpattern_add_string(ms, b, s, e);
        return 1;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1)) return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return 1;
}

/* string.gsub(s, pattern, repl [, n]) */
static int lpattern_gsub(lua_State *L) {
    size_t srcl, lp;
    const char *src = luaL_checklstring(L, 1, &srcl);
    const char *p = luaL_checklstring(L, 2, &lp);
    const char *lastmatch = NULL;
    int tr = lua_type(L, 3);
    lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1);
    int anchor = *p == '^';
    lua_Integer n = 0;
    int changed = 0;
    lpattern_state ms;
    luaL_Buffer b;
    luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                     "string/function/table");
    luaL_buffinit(L, &b);
    if (anchor) {
        p++;
        lp--;
    }
    lpattern_prepare(&ms, L, src, srcl, p, lp);
    while (n < max_s) {
        lpattern_restart(&ms);
        const char *e = lpattern_match(&ms, src, p);
        if (e && e != lastmatch) {
            n++;
            changed = lpattern_add_value(&ms, &b, src, e, tr) | changed;
            src = lastmatch = e;
        } else if (src < ms.src_end) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        if (anchor) break;
    }
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

void lpattern_open(lua_State *L) {
    static const luaL_Reg fns[] = {
        { "find", lpattern_find },
        { "match", lpattern_match_fn },
        { "gmatch", lpattern_gmatch },
        { "gsub", lpattern_gsub },
        { NULL, NULL },
    };
    luaL_setfuncs(L, fns, 0);
}
