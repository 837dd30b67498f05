/* json.h: a strict, small JSON reader for the token endpoint's replies and the streaming messages the relay reads, and a string escaper. */
#ifndef TOKEND_JSON_H
#define TOKEND_JSON_H

#include <stddef.h>

#define JSON_TOKEN_MAX 8192
#define JSON_ERROR_MAX 4096

/* What tokend needs from a reply body: top-level "token", "expires_in_seconds", "error". */
typedef struct json_token_reply {
    char token[JSON_TOKEN_MAX];
    int has_token; /* 1 when "token" is a non-empty string that fit */
    long expires_in_seconds;
    int has_expires;            /* 1 when "expires_in_seconds" is an integer */
    char error[JSON_ERROR_MAX]; /* "error" string (truncated), if any */
    int has_error;
} json_token_reply;

/* Parses body as one JSON object (RFC 8259, nesting up to 32 levels, nothing after it
 * but whitespace) and extracts the fields above. Returns 0, or -1 when the body is not a
 * valid JSON object. Never reads past len. */
int json_parse_token_reply(const char *body, size_t len, json_token_reply *out);

/* What the relay reads of a streaming message (a JSON object): top-level members only. */
typedef struct json_message {
    char type[32];                 /* "type"; "" when absent, not a string or longer */
    char id[80];                   /* "id" (Begin's session id); "" likewise */
    int end_of_turn;               /* "end_of_turn" is true */
    double audio_duration_seconds; /* Termination's figures; -1 when absent or not numbers */
    double session_duration_seconds;
    double error_code; /* an Error's "error_code"; 0 when absent */
} json_message;

/* Parses body as one JSON object (as json_parse_token_reply does) and reads the members
 * above. Returns 0, or -1 when the body is not a valid JSON object (out then empty). */
int json_parse_message(const char *body, size_t len, json_message *out);

/* Appends s to buf[off..cap) as the inside of a JSON string (quotes and control
 * characters escaped), stopping before the escape that would not fit with room for 7
 * more bytes. Returns the new offset. */
size_t json_escape(char *buf, size_t off, size_t cap, const char *s);

#endif
