/* notify.h: telling the service manager how tokend is doing: systemd's sd_notify protocol, without libsystemd. */
#ifndef TOKEND_NOTIFY_H
#define TOKEND_NOTIFY_H

/* Opens the socket $NOTIFY_SOCKET names (set by systemd for Type=notify). Returns 1 when
 * there is one, 0 when tokend runs without a service manager, -1 when it cannot be used. */
int notify_open(void);

/* Sends a state ("READY=1", "STOPPING=1", "STATUS=...") when a socket is open; nothing
 * otherwise. Safe in a signal handler. */
void notify_send(const char *state);

void notify_close(void);

#endif
