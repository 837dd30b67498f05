/* embed.c: a C program that embeds tokend: the default routes script, one extra route
 * written in C, and the server driven from the program's own poll() loop.
 *
 *   cc embed.c $(pkg-config --cflags --libs tokend) \
 *      -Wl,-rpath,$(pkg-config --variable=libdir tokend) -o embed   (the rpath: where libtokend.so is)
 *   cc embed.c $(pkg-config --cflags --libs tokend-static) -o embed  (or libtokend.a: no rpath needed)
 *   ASSEMBLYAI_API_KEY=... ./embed PORT SCRIPT PUBLIC     serve
 *   ASSEMBLYAI_API_KEY=... ./embed --mint                 print one token and exit
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tokend.h>

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* GET /c/hello/:name -> {"hello": "<name>", "from": "C"} */
static void hello(void *ud, const tokend_request *req, tokend_response *resp) {
    char body[256];
    const char *name = tokend_request_param(req, "name");
    int n = snprintf(body, sizeof body, "{\"hello\":\"%.64s\",\"from\":\"%s\"}", name ? name : "?", (const char *)ud);
    tokend_response_header(resp, "Cache-Control", "no-store");
    tokend_response_set(resp, 200, "application/json", body, (size_t)n);
}

int main(int argc, char **argv) {
    char err[1024];
    tokend_config cfg;
    tokend_config_init(&cfg);
    cfg.api_key = getenv("ASSEMBLYAI_API_KEY");
    if (getenv("ASSEMBLYAI_STREAMING_URL")) cfg.streaming_url = getenv("ASSEMBLYAI_STREAMING_URL");

    if (argc == 2 && strcmp(argv[1], "--mint") == 0) {
        char token[8192];
        long expires = 0;
        int status = 0;
        if (tokend_mint(&cfg, 60, 0, token, sizeof token, &expires, &status, err, sizeof err) != TOKEND_OK) {
            fprintf(stderr, "embed: no token (upstream status %d): %s\n", status, err);
            return 1;
        }
        printf("token of %zu characters, valid for %ld s\n", strlen(token), expires);
        return 0;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: embed PORT SCRIPT PUBLIC | embed --mint\n");
        return 2;
    }
    cfg.port = atoi(argv[1]);
    cfg.script = argv[2];
    cfg.public_dir = argv[3];
    cfg.workers = 1;                      /* driven from this thread's loop */

    tokend_server *srv = NULL;
    if (tokend_server_create(&cfg, &srv, err, sizeof err) != TOKEND_OK ||
        tokend_server_route(srv, "GET", "/c/hello/:name", hello, "C", err, sizeof err) != TOKEND_OK) {
        fprintf(stderr, "embed: %s\n", err);
        tokend_server_free(srv);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    printf("embed listening on http://127.0.0.1:%d\n", tokend_server_port(srv));
    fflush(stdout);

    /* The program's own event loop: poll tokend's descriptor next to anything else. */
    struct pollfd pfd = { .fd = tokend_server_fd(srv), .events = POLLIN };
    while (!stop_requested) {
        long timeout = tokend_server_timeout_ms(srv);
        if (timeout < 0 || timeout > 1000) timeout = 1000;
        poll(&pfd, 1, (int)timeout);
        if (tokend_server_step(srv, 0, err, sizeof err) != TOKEND_OK) {
            fprintf(stderr, "embed: %s\n", err);
            break;
        }
    }
    tokend_server_free(srv);
    return 0;
}
