/* relay.h: streaming sessions relayed between a browser's WebSocket and the upstream's: both sides, their limits, pacing and buffers, what was relayed, and how each session ended. */
#ifndef TOKEND_RELAY_H
#define TOKEND_RELAY_H

#include <stddef.h>

#include "fetch.h"
#include "http.h"
#include "loop.h"
#include "ws.h"

typedef struct relay_hub relay_hub; /* a worker's sessions */
typedef struct relay_session relay_session;

/* How a session ended. */
typedef enum relay_cause {
    RELAY_RUNNING = 0,          /* not yet */
    RELAY_TERMINATED,           /* the client sent Terminate and the upstream ended the session */
    RELAY_CLIENT_CLOSED,        /* the client closed its WebSocket */
    RELAY_CLIENT_GONE,          /* the client's connection ended without a close */
    RELAY_UPSTREAM_CLOSED,      /* the upstream closed (its code passed on) */
    RELAY_UPSTREAM_GONE,        /* the upstream's connection ended without a close, or broke the protocol */
    RELAY_UPSTREAM_REFUSED,     /* the upstream answered the handshake 401/403 (1008) or 429 (3009) */
    RELAY_UPSTREAM_UNAVAILABLE, /* not reached, not in time, or another answer (1013) */
    RELAY_NO_KEY,               /* no API key is configured (1011) */
    RELAY_MAX_SECONDS,          /* the session's length (3008) */
    RELAY_IDLE,                 /* nothing from the client for the idle time (1008) */
    RELAY_RATE,                 /* too many messages from the client (1008) */
    RELAY_BAD_AUDIO,            /* an audio message outside 50..1000 ms (3007) */
    RELAY_BAD_MESSAGE,          /* a text message that is not one the protocol has (3006) */
    RELAY_PROTOCOL,             /* the client broke the WebSocket protocol (wslay's 1002, 1007, 1009) */
    RELAY_STALLED,              /* one side stopped reading (1008 to the client, or 1011) */
    RELAY_SCRIPT,               /* the script closed it */
    RELAY_HOOK_FAILED,          /* a hook raised or ran out of budget (1011) */
    RELAY_SHUTDOWN,             /* the server stops (1001) */
    RELAY_BAD_HANDSHAKE,        /* not a WebSocket handshake: answered 400, never opened */
    RELAY_INTERNAL,             /* out of memory (1011, or 503) */
    RELAY_CAUSES
} relay_cause;

/* The cause's name in logs, metrics and scripts ("terminated", "client_gone", ...). */
const char *relay_cause_name(relay_cause c);

/* What a session did, so far or in the end. */
typedef struct relay_facts {
    const char *id;                         /* tokend's id for the session (16 hex digits) */
    const char *upstream_id;                /* the upstream's, from its Begin; "" before */
    const char *user;                       /* as the options named it; "" when not */
    double seconds;                         /* the upstream session's time open: from its 101 to its close */
    double audio_seconds;                   /* audio relayed to the upstream */
    unsigned long long bytes_in, bytes_out; /* message bytes client -> upstream, upstream -> client */
    unsigned long long messages_in, messages_out;
    double upstream_audio_seconds; /* Termination's figures; -1 when none came */
    double upstream_session_seconds;
    relay_cause cause;
    int code;            /* the close code the client was sent, 0 when none */
    const char *reason;  /* its reason */
    int upstream_code;   /* the upstream's close code, 0 when it sent none */
    int upstream_status; /* its answer to the handshake (101, 401, ...), 0 when none came */
    int status;          /* the answer to the client's handshake: 101, or 400, 503 */
    double handshake_ms; /* the upstream's handshake, -1 when it did not complete */
} relay_facts;

/* What a session tells its owner (the script's hooks), from the loop. The message bytes
 * are valid during the call only; s may be closed from inside any of them. */
typedef struct relay_owner {
    /* The upstream's Begin: its session id and the whole message. */
    void (*on_begin)(void *ud, relay_session *s, const char *id, const char *msg, size_t len);
    /* A Turn whose end_of_turn is true (and, with format_turns, its formatted version). */
    void (*on_turn)(void *ud, relay_session *s, const char *msg, size_t len);
    /* Every text message of the upstream (when the options ask for them). */
    void (*on_message)(void *ud, relay_session *s, const char *msg, size_t len);
    /* The client's UpdateConfiguration: reading from the client waits until the owner
     * answers with relay_session_update. NULL: such messages are dropped. */
    void (*on_update)(void *ud, relay_session *s, const char *msg, size_t len);
    /* The session is over: called once, last; s is freed when it returns. */
    void (*on_end)(void *ud, relay_session *s, const relay_facts *f);
} relay_owner;

/* What the upstream is and how long its handshake may take; strings are copied. */
typedef struct relay_settings {
    const char *url;           /* the streaming URL: http(s)://host[:port][/prefix] */
    const char *api_key;       /* NULL or "": sessions end with RELAY_NO_KEY */
    const char *proxy;         /* for the upstream connection; NULL or "": none */
    long handshake_timeout_ms; /* connect, TLS and the upstream's 101 */
} relay_settings;

/* How one session runs (the script's choices). */
typedef struct relay_options {
    const char *query; /* the upstream's query (without sample_rate, encoding or token) */
    long sample_rate;  /* Hz, 8000..48000; appended to the query */
    int mulaw;         /* pcm_mulaw (1 byte a sample) rather than pcm_s16le */
    long max_seconds;  /* the session's length */
    long idle_seconds; /* nothing from the client for this long ends it; 0: never */
    const char *user;  /* who, for the audit line; may be NULL */
    int every_message; /* 1: on_message for every upstream text message */
} relay_options;

/* Creates the sessions of a worker, on its loop and HTTP client. NULL when out of memory. */
relay_hub *relay_hub_create(loop *lp, fetch *client, const relay_settings *st);

/* Frees a worker's sessions: those left are cut without a word to the client or owner
 * (relay_hub_close_all first). NULL is allowed. */
void relay_hub_free(relay_hub *hub);

/* Sessions running, their handshakes included. */
size_t relay_hub_count(const relay_hub *hub);

/* Ends every session as the server stops: 1001 to the clients, Terminate to the upstream
 * (the loop must turn for the closes to go out); handshakes still running are answered 503. */
void relay_hub_close_all(relay_hub *hub);

/* Takes over req, a client's WebSocket handshake: opens the upstream session with o,
 * answers the client 101 once the upstream accepted, and relays frames both ways. A
 * handshake that is not a valid one is answered 400; when the upstream refuses or cannot
 * be reached, the client still gets its 101 and then a close with the upstream's code (or
 * 1013). The owner hears of the session through owner (with ud), on_end always, never
 * from inside this call. Returns the session, or NULL when out of memory (req answered
 * 503; nothing is called). */
relay_session *relay_start(relay_hub *hub, http_request *req, const relay_options *o, const relay_owner *owner,
                           void *ud);

/* Ends a session: the client gets a close with code and reason (after an Error message
 * saying why, as the upstream would), the upstream a Terminate, then a close. The first
 * cause given stays. */
void relay_session_close(relay_session *s, relay_cause cause, int code, const char *reason);

/* Answers on_update: msg (len bytes of text) goes to the upstream in its place, or
 * nothing when msg is NULL; the client is read from again. */
void relay_session_update(relay_session *s, const char *msg, size_t len);

/* The owner is gone: the session is told nothing more and ends (as at a shutdown). */
void relay_session_forget(relay_session *s);

/* What the session did so far (strings valid until the session changes). */
void relay_session_facts(const relay_session *s, relay_facts *f);

#endif
