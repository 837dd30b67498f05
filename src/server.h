/* server.h: what the Lua module needs of the server beyond the public API. */
#ifndef TOKEND_SERVER_H
#define TOKEND_SERVER_H

#include "lhost.h"
#include "tokend.h"

/* Creates a one-worker server whose requests are answered by an attached host h (the
 * Lua module's, on the application's state) instead of a script of its own. h enters the
 * server's world still loading (routes may be added, tokend.config is the server's) until
 * the caller calls lhost_serve; it is borrowed, and goes back to its own world when the
 * server is freed. Reloads do nothing. */
int server_create_attached(const tokend_config *cfg, lhost *h, tokend_server **out, char *err, size_t errlen);

/* Returns 1 once tokend_server_stop() was called. */
int server_stopping(const tokend_server *srv);

#endif
