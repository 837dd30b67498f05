/* ltoken.h: minting for the parts of the Lua API: a token request waited for, its outcome as Lua values, its audit line. */
#ifndef TOKEND_LTOKEN_H
#define TOKEND_LTOKEN_H

#include <lua.h>

#include "audit.h"
#include "lhost.h"
#include "upstream.h"

/* Who asked for a token, for the audit line every token request writes. */
typedef struct ltoken_audit {
    audit_who who; /* client, Origin, req.log.user */
    long expires_in_s;
    long max_session_s; /* 0: the upstream's default */
    int pooled;         /* handed out from a pool (minted and counted before) */
    int quiet;          /* a failure already logged (a pool's open breaker): no warning */
} ltoken_audit;

/* Fills a from the request whose handler runs on L (empty outside one). */
void ltoken_audit_capture(lua_State *L, lhost *h, long expires_in_s, long max_session_s, ltoken_audit *a);

/* Pushes what generate_temp_token returns for r, `token, info` or
 * `nil, err, upstream_status, failure`; counts it, logs a failure, and writes the audit
 * line when a is not NULL. Returns the number of values. */
int ltoken_push_outcome(lua_State *L, const upstream_result *r, const ltoken_audit *a);

/* Sees the outcome of a mint before the Lua call returns it (a pool counts it). */
typedef void ltoken_observe_fn(void *ud, const upstream_result *r);

/* Where a token is minted and its session streams: one of AssemblyAI's endpoints. */
typedef struct ltoken_target {
    const char *token_url; /* NULL: the upstream's own (ASSEMBLYAI_STREAMING_URL) */
    const char *websocket_url;
    const char *region;  /* a data zone's name, or NULL */
    const char *product; /* "streaming" or "voice_agent" */
} ltoken_target;

/* Mints a token for the code on L, which waits as for any outside call (fn names the Lua
 * function in errors), and returns what generate_temp_token returns, with its audit line.
 * observe (may be NULL) gets the outcome first. */
int ltoken_mint(lua_State *L, lhost *h, const char *fn, long expires_in_s, long max_session_s,
                ltoken_observe_fn *observe, void *observe_ud);

/* ltoken_mint at target (NULL: the upstream's own endpoint), and the success's info table
 * says where the session streams. */
int ltoken_mint_at(lua_State *L, lhost *h, const char *fn, const ltoken_target *target, long expires_in_s,
                   long max_session_s, ltoken_observe_fn *observe, void *observe_ud);

#endif
