/* lpreload.h: the parts of tokend written in Lua (src/lua), embedded at build time and preloaded into every state. */
#ifndef TOKEND_LPRELOAD_H
#define TOKEND_LPRELOAD_H

#include <stddef.h>

typedef struct lua_State lua_State;

/* One embedded module: its name for require, its file under src/lua, its text. */
typedef struct lpreload_module {
    const char *name; /* "tokend.streaming" */
    const char *file; /* "tokend/streaming.lua" */
    const char *text;
    size_t len;
} lpreload_module;

/* The embedded modules (generated from src/lua by cmake/embed-lua.cmake). */
extern const lpreload_module lpreload_modules[];
extern const size_t lpreload_count;

/* Puts every embedded module in package.preload of L, where require finds it before any
 * file: loaded as text, with its file (tokend/streaming.lua) as its chunk name. Raises on a memory error. */
void lpreload_open(lua_State *L);

#endif
