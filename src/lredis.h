/* lredis.h: Redis commands from Lua for the parts of the API that keep state in Redis (tokend.redis, limiters, dictionaries): a command waited for like any outside call. */
#ifndef TOKEND_LREDIS_H
#define TOKEND_LREDIS_H

#include <lua.h>

#include "lhost.h"
#include "redis.h"

/* Pushes what the Lua call returns for a command's outcome: reply (an error reply
 * included), or NULL and err ("timeout: ...", "down: ...", "redis: not configured ...").
 * ctx is the caller's, copied by lredis_call. Returns the number of values; may raise. */
typedef int lredis_push_fn(lua_State *L, const redis_reply *reply, const char *err, void *ctx);

/* Runs the command argv for the code on L, which waits as for any outside call, and
 * returns what the Lua function (named fn in errors) must return: push's values. When
 * script (the source of a server-side Lua script) is not NULL, runs it instead, with argv
 * as its nkeys keys and then its arguments: by EVALSHA, and by EVAL when Redis does not
 * know it yet. ctxlen bytes at ctx are copied for push. Raises where L may not wait. */
int lredis_call(lua_State *L, lhost *h, const char *fn, const char *script, int nkeys, int argc, const char **argv,
                const size_t *argvlen, lredis_push_fn *push, const void *ctx, size_t ctxlen);

/* Writes a number as Redis arguments carry it: integers without a fraction, others with
 * the 17 digits that give the same double back. */
void lredis_number(double n, char out[32]);

#endif
