/* fetchint.h: the HTTP client's insides (the client, its multi handles), private to its files fetch*.c. */
#ifndef TOKEND_FETCHINT_H
#define TOKEND_FETCHINT_H

#include <curl/curl.h>

#include "fetch.h"
#include "list.h"
#include "loop.h"

/* libcurl scans a multi handle's whole connection cache for every transfer (to find a
 * free keep-alive connection, and again when the transfer leaves). With a thousand calls
 * in flight that scan dominates, so calls are spread over several multi handles of at
 * most FETCH_SHARD_CALLS transfers each; they share DNS and TLS sessions. */
#define FETCH_SHARD_CALLS 64
#define FETCH_MAX_SHARDS 64

typedef struct fetch_shard fetch_shard;

/* A libcurl multi handle: calls run on several (see FETCH_SHARD_CALLS), connections on others. */
struct fetch_shard {
    fetch *f;
    CURLM *multi;
    loop_timer timer;     /* curl's timeout for this multi handle */
    int transfers;        /* easy handles in multi */
    int used;             /* a transfer started since the last sweep */
    int broken;           /* curl's state for it cannot be trusted: retiring */
    loop_timer retire;    /* the retirement, once the loop's round is over */
    int conns;            /* 1: it runs connections (fetch_connect), not calls */
    list_node conns_link; /* connections': in the client's conn_shards while sound */
};

struct fetch {
    loop *lp;
    fetch_shard *shards[FETCH_MAX_SHARDS];
    int nshards;
    loop_timer sweep; /* armed while there is more than one shard */
    CURLSH *share;
    char *ca_file;
    long connect_timeout_ms;
    list_node active;        /* calls running */
    list_node idle;          /* finished calls kept with their easy handle for reuse */
    unsigned char *conn_fds; /* per fd: FETCH_FD_OPENED, FETCH_FD_PARKABLE or 0 */
    int nconn_fds;
    list_node conn_shards; /* multi handles of connections (fetch_connect), sound ones */
    list_node conns;       /* connections opened or being opened */
};

/* ---- fetch.c: the multi handles on the worker's loop ---- */

/* Counts connections libcurl opened (CURLINFO_NUM_CONNECTS), for fetch_totals. */
void fetch_count_opened(long connections);

/* libcurl's socket, timer, open-socket and close-socket callbacks, for every multi handle
 * and easy handle of the client (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION,
 * CURLOPT_OPENSOCKETFUNCTION, CURLOPT_CLOSESOCKETFUNCTION). */
int fetch_on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp);
int fetch_on_timer_change(CURLM *multi, long timeout_ms, void *userp);
curl_socket_t fetch_on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a);
int fetch_on_close_socket(void *ud, curl_socket_t s);

/* Stops using a multi handle whose state curl may have corrupted: it is retired once the
 * loop's round is over. */
void fetch_break_shard(fetch_shard *sh, const char *why);

/* Closes a multi handle (and its connections) and frees it. */
void fetch_shard_free(fetch *f, fetch_shard *sh);

/* ---- fetchconn.c: connections for another protocol ---- */

/* Hands over the connections of sh that finished opening (or failed to). */
void fetchconn_drain(fetch_shard *sh);

/* Takes a multi handle of connections out of the list new connections start on. */
void fetchconn_shard_unlink(fetch_shard *sh);

/* Retires a broken multi handle of connections (a loop timer's callback, sh as ud). */
void fetchconn_on_retire(void *ud);

/* Closes every connection of the client (fetch_free). */
void fetchconn_close_all(fetch *f);

#endif
