/* ltokenlib.h: the outcome of a token request as the Lua API returns it (for the pool). */
#ifndef TOKEND_LTOKENLIB_H
#define TOKEND_LTOKENLIB_H

#include <lua.h>

#include "upstream.h"

/* Pushes what generate_temp_token returns for r, `token, info` or
 * `nil, err, upstream_status, failure`, and counts and logs it. Returns the number of values. */
int ltoken_push_outcome(lua_State *L, const upstream_result *r);

/* Checks generate_temp_token's arguments at stack index idx (expires_in_seconds, then an
 * optional options table); raises on a bad one. */
void ltoken_check_args(lua_State *L, int idx, long *expires_in_s, long *max_session_s);

#endif
