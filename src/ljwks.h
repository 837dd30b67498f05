/* ljwks.h: an identity provider's JWK Set for tokend.jwt: fetched per Lua state, shared with the other workers, waited for. */
#ifndef TOKEND_LJWKS_H
#define TOKEND_LJWKS_H

#include <stdint.h>

#include <lua.h>

#include "lhost.h"

#define LJWKS_REFETCH_S 30 /* an unknown kid refetches at most this often, all workers together */
#define LJWKS_FAILED_S 30  /* after a failed fetch, the next waits this long */

/* What one Lua state knows of one JWKS URL: the keys of its last good document, when it
 * was fetched, the last failure, a fetch going on and the calls waiting for it. */
typedef struct ljwks ljwks;

/* Ends a wait (see ljwks_wait): called on a stack holding just the values the waiting call
 * kept, it pushes the results the call returns and returns their number. It may raise. */
typedef int ljwks_resume_fn(lua_State *L, ljwks *j);

/* The entry of url in the state of h (L runs on it), made on first use; it lives as long
 * as the state. parse turns a fetched document into keys: it is called protected with the
 * document's text at index 1 and returns 1 with the keys pushed (any Lua value), or raises
 * why the document is unusable. Raises only when out of memory. */
ljwks *ljwks_of(lua_State *L, lhost *h, const char *url, lua_CFunction parse);

/* Pushes the keys j has and returns 1, or pushes nothing and returns 0 when it has none
 * (no document fetched yet, or none usable). */
int ljwks_push(lua_State *L, const ljwks *j);

/* Like ljwks_push, after taking the document another worker fetched when j has no keys or
 * keys older than ttl_ms (the caller's jwks_ttl, also the time a document is shared). */
int ljwks_keys(lua_State *L, ljwks *j, uint64_t ttl_ms);

/* Why j has no keys: the last failure, or "no JWKS yet". Never NULL. */
const char *ljwks_error(const ljwks *j);

/* 1 when a fetch of j failed, here or in another worker, less than LJWKS_FAILED_S ago. */
int ljwks_failed_lately(ljwks *j);

/* Starts fetching j again in the background when its keys are older than the ttl of the
 * last ljwks_keys and no fetch failed lately; callers go on with the keys in hand. */
void ljwks_renew(ljwks *j, lhost *h);

/* For a kid j's keys do not hold: 1 when no worker fetched j in the last LJWKS_REFETCH_S,
 * and starts that interval for all of them; 0 otherwise (or when the shared dictionary is
 * out of reach). */
int ljwks_claim_refetch(ljwks *j);

/* Makes the call running on L (a function fn of the Lua API) wait for a fetch of j, which
 * starts unless one is going on. The n values on top of L's stack are kept; when the fetch
 * ends (or the script is replaced) resume(L, j) runs on a stack holding just them, and its
 * results are the call's. Returns what the C function must return (see lhost_wait), or -1
 * without waiting when no fetch can start (ljwks_error says why). Raises where a call may
 * not wait (see lhost_wait_begin). */
int ljwks_wait(lua_State *L, lhost *h, ljwks *j, const char *fn, int n, ljwks_resume_fn *resume);

#endif
