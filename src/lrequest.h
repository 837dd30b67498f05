/* lrequest.h: a request as handlers see it (the req table) and their results as an HTTP answer. */
#ifndef TOKEND_LREQUEST_H
#define TOKEND_LREQUEST_H

#include <stddef.h>

#include "audit.h"
#include "http.h"
#include "router.h"

typedef struct lua_State lua_State;

/* Pushes the req table a handler receives for req: method, path, query (decoded; the
 * first value of a repeated name), headers (lower-case names, repeats joined), cookies,
 * params (match's, decoded), remote_addr, client, body and an empty log table. Returns
 * 0, or the URL_ERR_* code of a query string that was refused (the table is pushed
 * anyway, its query partial). Raises when memory runs out. */
int lrequest_push(lua_State *L, http_request *req, const router_result *match, size_t max_query_args);

/* A handler's answer being built. */
typedef struct lrequest_answer {
    int encode_ref;      /* registry: cjson.encode, for table bodies */
    http_response *resp; /* the built response (the caller frees or sends it) */
    int status;
    size_t bytes;     /* the body's size, for the access log */
    char reason[128]; /* the error a table body gave ({error = "..."}), or "" */
} lrequest_answer;

/* Builds the HTTP answer from a handler's results: a lua_CFunction to call protected,
 * with 1 = the lrequest_answer (light userdata), 2 = status, 3 = body (a string, a table
 * sent as JSON, or nil), 4 = headers (nil, or names to strings, numbers or lists of
 * them). Raises, naming the fault, when a result is not of that shape. */
int lrequest_build_response(lua_State *L);

/* Writes the fields a handler put in req.log on the request's access line: a
 * lua_CFunction to call protected, with 1 = the http_request (light userdata) and 2 = its
 * req table. At most 32 string, number or boolean fields. */
int lrequest_log_fields(lua_State *L);

/* Fills who from the req table at stack index idx: client, headers.origin, log.user. */
void lrequest_who(lua_State *L, int idx, audit_who *who);

#endif
