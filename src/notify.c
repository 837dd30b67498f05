/* notify.c: telling the service manager how tokend is doing: systemd's sd_notify protocol, without libsystemd. */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_addr_len;

int notify_open(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    size_t n;
    if (!path || !*path) return 0;
    n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof notify_addr.sun_path) return -1;
    memset(&notify_addr, 0, sizeof notify_addr);
    notify_addr.sun_family = AF_UNIX;
    memcpy(notify_addr.sun_path, path, n);
    if (path[0] == '@') notify_addr.sun_path[0] = '\0'; /* an abstract socket */
    notify_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return notify_fd < 0 ? -1 : 1;
}

void notify_send(const char *state) {
    int saved = errno; /* safe in a signal handler: one system call, errno kept */
    if (notify_fd >= 0)
        (void)sendto(notify_fd, state, strlen(state), MSG_NOSIGNAL, (const struct sockaddr *)&notify_addr,
                     notify_addr_len);
    errno = saved;
}

void notify_close(void) {
    if (notify_fd >= 0) close(notify_fd);
    notify_fd = -1;
}
