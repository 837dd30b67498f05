/* relaymsg.c: what passes through a relayed session: the client's messages checked, rate-limited, paced and held for an update; the upstream's read for what the relay records and screened for the key. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "json.h"
#include "log.h"
#include "relayint.h"

/* ---- limits on the client's side ---- */

/* Takes a frame from the client's rate bucket; 0 when it is empty. */
static int relaymsg_rate_take(relay_session *s) {
    uint64_t now = relay_now_ms();
    s->rate_tokens += (double)(now - s->rate_ms) * RELAY_RATE_PER_S / 1000.0;
    if (s->rate_tokens > RELAY_RATE_BURST) s->rate_tokens = RELAY_RATE_BURST;
    s->rate_ms = now;
    if (s->rate_tokens < 1) return 0;
    s->rate_tokens -= 1;
    return 1;
}

void relaymsg_on_client_frame(void *ud) {
    relay_session *s = ud;
    s->last_client_ms = relay_now_ms();
    if (!relaymsg_rate_take(s) && !s->cause) relay_end(s, RELAY_RATE, WS_CODE_POLICY, "too many messages", 1);
}

/* Audio is relayed no faster than real time and a margin: ahead of it, the client is not
 * read until the wall clock catches up (the upstream would close the session). */
static void relaymsg_pace(relay_session *s) {
    uint64_t now = relay_now_ms();
    if (!s->first_audio_ms) s->first_audio_ms = now;
    double audio_ms = (double)s->audio_bytes / s->bytes_per_ms;
    double ahead = audio_ms - (double)(now - s->first_audio_ms);
    if (ahead <= RELAY_PACE_AHEAD_MS) return;
    s->b_pause_pace = 1;
    s->pace_until_ms = s->first_audio_ms + (uint64_t)(audio_ms - RELAY_PACE_AHEAD_MS / 2);
    ws_pause(s->b, 1); /* at once: the read under way stops here */
    relay_schedule(s);
}

/* ---- messages ---- */

static void relaymsg_forward_client(relay_session *s, int binary, const uint8_t *data, size_t len);

/* Keeps a client message that arrived while an update is being decided. */
static void relaymsg_hold(relay_session *s, int binary, const uint8_t *data, size_t len) {
    relay_held *h = malloc(sizeof *h + len);
    if (!h) {
        relay_end(s, RELAY_INTERNAL, WS_CODE_INTERNAL, "out of memory", 1);
        return;
    }
    h->next = NULL;
    h->binary = binary;
    h->len = len;
    memcpy(h->data, data, len);
    *s->held_tail = h;
    s->held_tail = &h->next;
    s->held_bytes += len;
}

/* A text message of the client: the protocol's few, checked; an update goes to the owner. */
static void relaymsg_client_text(relay_session *s, const uint8_t *data, size_t len) {
    json_message m;
    if (json_parse_message((const char *)data, len, &m) < 0) {
        relay_end(s, RELAY_BAD_MESSAGE, 3006, "a text message must be a JSON object", 1);
        return;
    }
    if (strcmp(m.type, "UpdateConfiguration") == 0) {
        if (!s->owner.on_update) {
            if (!s->update_dropped++)
                log_msg(LOG_DEBUG, "relay %s: an UpdateConfiguration was dropped (the script takes none)", s->id);
            return;
        }
        s->b_hold = 1;
        s->owner.on_update(s->ud, s, (const char *)data, len);
        return;
    }
    if (strcmp(m.type, "Terminate") == 0) s->client_terminate = 1;
    else if (strcmp(m.type, "ForceEndpoint") != 0 && strcmp(m.type, "KeepAlive") != 0) {
        relay_end(s, RELAY_BAD_MESSAGE, 3006,
                  "text messages are Terminate, ForceEndpoint, KeepAlive or UpdateConfiguration", 1);
        return;
    }
    ws_send(s->u, 0, data, len);
    s->bytes_in += len;
}

static void relaymsg_forward_client(relay_session *s, int binary, const uint8_t *data, size_t len) {
    if (s->b_hold) {
        relaymsg_hold(s, binary, data, len);
        return;
    }
    s->msgs_in++;
    if (!binary) {
        relaymsg_client_text(s, data, len);
        return;
    }
    if (len < s->min_audio || len > s->max_audio || len % s->sample_bytes) {
        char why[120];
        snprintf(why, sizeof why, "audio messages must hold 50 to 1000 ms (this one: %.1f ms)",
                 (double)len / s->bytes_per_ms);
        relay_end(s, RELAY_BAD_AUDIO, 3007, why, 1);
        return;
    }
    ws_send(s->u, 1, data, len);
    s->bytes_in += len;
    s->audio_bytes += len;
    relaymsg_pace(s);
    if (ws_queued_bytes(s->u) > RELAY_QUEUE_HIGH) ws_pause(s->b, 1); /* relay_balance keeps it so */
}

void relaymsg_on_client_message(void *ud, int binary, const uint8_t *data, size_t len) {
    relay_session *s = ud;
    if (s->cause || !s->u) return; /* ending: what still comes is dropped */
    relaymsg_forward_client(s, binary, data, len);
}

void relay_session_update(relay_session *s, const char *msg, size_t len) {
    if (!s->b_hold) return;
    s->b_hold = 0;
    if (msg && !s->cause && s->u) {
        ws_send(s->u, 0, msg, len);
        s->bytes_in += len;
    }
    /* What arrived meanwhile goes now, in order (another update holds the rest again). */
    while (s->held && !s->b_hold && !s->cause) {
        relay_held *h = s->held;
        s->held = h->next;
        if (!s->held) s->held_tail = &s->held;
        s->held_bytes -= h->len;
        relaymsg_forward_client(s, h->binary, h->data, h->len);
        free(h);
    }
    if (s->cause) relay_free_held(s);
    relay_after_call(s);
}

/* Whether text holds the key (the upstream echoing the Authorization it got, as some
 * servers do in their errors): any 8 characters of it in a row, in any case. */
int relaymsg_holds_key(const relay_session *s, const char *text, size_t len) {
    const char *key = s->hub->key;
    size_t klen = key ? strlen(key) : 0, w = klen < 8 ? klen : 8;
    if (!w || len < w) return 0;
    for (size_t i = 0; i + w <= klen; i++)
        for (size_t j = 0; j + w <= len; j++)
            if (strncasecmp(text + j, key + i, w) == 0) return 1;
    return 0;
}

/* A message from the upstream: read for what the relay records and the owner wants, then
 * passed on as is, but one that shows the key (never relayed; an Error is told without it). */
void relaymsg_on_upstream_message(void *ud, int binary, const uint8_t *data, size_t len) {
    relay_session *s = ud;
    if (!binary) {
        json_message m;
        const char *text = (const char *)data;
        int parsed = json_parse_message(text, len, &m) == 0;
        /* An error's text is where a server echoes what it was sent: searched for any piece
         * of the key; other messages for the key whole (a Turn a second costs no more). */
        if (parsed && strcmp(m.type, "Error") == 0 && len < RELAY_KEY_SCAN_MAX
                    ? relaymsg_holds_key(s, text, len)
                    : memmem(text, len, s->hub->key, strlen(s->hub->key)) != NULL) {
            log_throttled(LOG_WARN, "relay",
                          "relay %s: the streaming service sent a message with the server's key in it: "
                          "not passed on",
                          s->id);
            return;
        }
        if (parsed) {
            if (strcmp(m.type, "Begin") == 0) {
                snprintf(s->upstream_id, sizeof s->upstream_id, "%s", m.id);
                if (s->owner.on_begin) s->owner.on_begin(s->ud, s, s->upstream_id, text, len);
            } else if (strcmp(m.type, "Turn") == 0 && m.end_of_turn) {
                if (s->owner.on_turn) s->owner.on_turn(s->ud, s, text, len);
            } else if (strcmp(m.type, "Termination") == 0) {
                s->got_termination = 1;
                s->up_audio_s = m.audio_duration_seconds;
                s->up_session_s = m.session_duration_seconds;
            }
        }
        if (s->every_message && s->owner.on_message && s->phase != RELAY_DONE) s->owner.on_message(s->ud, s, text, len);
    }
    if (s->b && ws_state(s->b) == WS_OPEN && ws_send(s->b, binary, data, len) == 0) {
        s->msgs_out++;
        s->bytes_out += len;
        if (ws_queued_bytes(s->b) > RELAY_QUEUE_HIGH) ws_pause(s->u, 1);
    }
}
