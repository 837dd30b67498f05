/* lsecret.h: secret handles in Lua (opaque values whose bytes stay in C) and the C buffers their bytes go through. */
#ifndef TOKEND_LSECRET_H
#define TOKEND_LSECRET_H

#include <stddef.h>
#include <lua.h>

#include "secret.h"

/* Pushes the handle of s: a userdata whose tostring is "secret:NAME" and which gives no
 * way to its bytes; one per state and secret, so handles of one name are equal. */
void lsecret_push(lua_State *L, const secret *s);

/* The secret of the handle at idx, or NULL when the value is none. */
const secret *lsecret_test(lua_State *L, int idx);

/* Raises "<where>: a secret cannot go there ..." when the value at idx is a handle: for
 * the places its bytes would leave (a log line, a stored value). */
void lsecret_refuse(lua_State *L, int idx, const char *where);

/* Bytes in C memory that may hold a secret: a userdata pushed on the stack, its bytes
 * wiped when cleared or collected (so an error raised midway leaks nothing). */
typedef struct lsecret_buf {
    char *data; /* NUL-terminated, or NULL while empty */
    size_t len, cap;
} lsecret_buf;

/* Pushes an empty buffer and returns it. */
lsecret_buf *lsecret_buf_push(lua_State *L);

/* Appends len bytes; raises when out of memory. */
void lsecret_buf_add(lua_State *L, lsecret_buf *b, const char *data, size_t len);

/* Wipes and frees the bytes; the buffer is empty again. */
void lsecret_buf_clear(lsecret_buf *b);

/* Appends the value at idx: a string or number as it is, a secret's bytes, or a list of
 * those joined (a template: { "Token ", secret }). Raises naming what for anything else. */
void lsecret_render(lua_State *L, int idx, lsecret_buf *b, const char *what);

/* Appends the table at idx encoded as JSON (lua-cjson's rules), each secret handle in it
 * written as a JSON string of the secret's bytes. Raises naming what for a value JSON
 * cannot hold, a cycle, a handle used as a name, or nesting deeper than 64. */
void lsecret_json(lua_State *L, int idx, lsecret_buf *b, const char *what);

#endif
