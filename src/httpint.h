/* httpint.h: the HTTP front's insides (the front, a request as it sees it), private to its files http*.c. */
#ifndef TOKEND_HTTPINT_H
#define TOKEND_HTTPINT_H

#include <stddef.h>
#include <stdint.h>
#include <microhttpd.h>

#include "http.h"
#include "list.h"
#include "log.h"
#include "netaddr.h"
#include "policy.h"

/* Where a request is: its head being received, its body, dispatched, answered. */
enum { REQ_NEW, REQ_BODY, REQ_DISPATCHED, REQ_ANSWERED };

struct http_front {
    struct MHD_Daemon *daemon;
    loop *lp;
    int epoll_fd;
    http_dispatch_fn *dispatch;
    void *dispatch_ud;
    size_t max_body_bytes;
    size_t in_flight;
    list_node heads;   /* exchanges whose head is being received: the handler not called yet */
    list_node pending; /* exchanges dispatched, unanswered */
    int closing;       /* http_free is under way */
    int quiesced_fd;   /* listening socket handed back by MHD_quiesce_daemon, or -1 */
    netaddr_nets *proxies;
    policy_conns *conns;
    policy_hosts *hosts;
    size_t max_header_bytes;
    size_t max_query_args;
    uint64_t request_timeout_ms;
    list_node conns_list; /* open connections (http_conn), for the request deadline */
    loop_timer tick_timer;
    int run_pending;            /* libmicrohttpd has work to do: its epoll fd was ready, or a resume */
    unsigned long log_sampled;  /* successes of sampled routes, for log_every */
    struct MHD_Daemon *daemon2; /* the second socket's (HTTPS beside HTTP), or NULL */
    int epoll_fd2;
    int quiesced_fd2;
    struct MHD_Daemon *tls_daemon; /* the daemon that speaks HTTPS, or NULL */
    unsigned int max_connections;  /* both daemons together */
    unsigned int nconns;
    list_node streams;  /* bodies being produced (http_stream) */
    list_node upgraded; /* connections handed over to their owners (http_upgraded) */
};

/* A request with what only the HTTP front sees of it. */
typedef struct http_exchange {
    http_request pub; /* first: an http_request * is an http_exchange * */
    struct MHD_Connection *conn;
    http_front *front;
    struct http_stream *stream; /* its answer's body, while being produced */
    char *target;
    size_t target_len;
    int state;
    int status;
    unsigned long long bytes;
    long long acked_at_queue; /* the connection's acknowledged bytes then, or -1 */
    struct MHD_Response *response;
    int suspended;
    size_t discarded;      /* body bytes dropped past the limit */
    log_field *log_fields; /* added to the access line (keys and values owned) */
    size_t nlog_fields;
    list_node link;      /* in the front's heads, then in its pending list */
    const char *version; /* "HTTP/1.1" (libmicrohttpd's, as long as the request) */
} http_exchange;

#define HTTP_EXCHANGE(req) ((http_exchange *)(req))
/* An http_response is a libmicrohttpd response under another name. */
#define HTTP_MHD(resp) ((struct MHD_Response *)(resp))

/* ---- http.c ---- */

/* Answers with a JSON error and closes the connection after it: what follows the request
 * on the connection cannot be trusted to be a request of its own. */
void http_request_fail_close(http_request *req, int status, const char *message);

/* ---- httpcheck.c: what a request must pass before it is dispatched ---- */

/* Splits the raw target into the decoded path and the raw query. Returns 0, -1 for a
 * malformed path, or -2 when out of memory. */
int httpcheck_parse_target(http_request *req);

/* Sets x's client: the peer, or the client a trusted proxy names in X-Forwarded-For. */
void httpcheck_resolve_client(http_front *f, http_exchange *x);

/* Checks what must hold before a request is dispatched: its head's syntax (RFC 9112), its
 * size, one unambiguous framing of its body, its query's argument count and its Host.
 * Returns 0, or -1 once it answered the request. */
int httpcheck_request(http_front *f, http_exchange *x, const char *version);

/* Answers the request whose Content-Length libmicrohttpd found malformed (400) or too large
 * (413), from its log message, with one well-formed response, and shuts the sending side. */
void httpcheck_refuse_framing(http_front *f, int status, const char *message);

/* ---- httpstream.c: connections handed over, responses produced later ---- */

/* The connection of x, answered 101, ends before its socket was handed over (libmicrohttpd
 * refused the 101, or the client left): its owner hears of a connection that never came. */
void httpstream_upgrade_lost(http_exchange *x);

/* libmicrohttpd refused to queue x's 101: logged, and its owner told as above. */
void httpstream_upgrade_refused(http_exchange *x);

/* The request x is over; its answer's body (x->stream, not NULL) may still be going out. */
void httpstream_forget_request(http_exchange *x);

/* Before the daemon stops: the connections handed over are closed (libmicrohttpd runs
 * once), those not yet handed over forgotten, and the bodies still being produced cut. */
void httpstream_close_all(http_front *f);

#endif
