/* qrterm.c: a QR code drawn with text for a terminal (the command line's, not the library's). */
#include <stdlib.h>
#include <string.h>
#include <qrencode.h>

#include "qrterm.h"

#define QRTERM_QUIET 2               /* modules of white around the code */
#define QRTERM_COLOURS "\033[30;47m" /* black on white */
#define QRTERM_RESET "\033[0m"

/* 1 when the module at (x, y) is dark; outside the code (the quiet zone) it is light. */
static int qrterm_dark(const QRcode *qr, int x, int y) {
    return x >= 0 && y >= 0 && x < qr->width && y < qr->width && (qr->data[y * qr->width + x] & 1);
}

char *qrterm_draw(const char *text) {
    QRcode *qr = QRcode_encodeString(text, 0, QR_ECLEVEL_L, QR_MODE_8, 1);
    if (!qr) return NULL;
    int side = qr->width + 2 * QRTERM_QUIET;
    /* Two rows of modules per line; each cell at most 3 bytes of UTF-8. */
    size_t cap = (size_t)(side / 2 + 1) * ((size_t)side * 3 + sizeof QRTERM_COLOURS + sizeof QRTERM_RESET + 1) + 1;
    char *out = malloc(cap), *o = out;
    if (!out) goto out;
    for (int y = -QRTERM_QUIET; y < qr->width + QRTERM_QUIET; y += 2) {
        memcpy(o, QRTERM_COLOURS, sizeof QRTERM_COLOURS - 1);
        o += sizeof QRTERM_COLOURS - 1;
        for (int x = -QRTERM_QUIET; x < qr->width + QRTERM_QUIET; x++) {
            int top = qrterm_dark(qr, x, y), bottom = qrterm_dark(qr, x, y + 1);
            const char *cell = top && bottom ? "\xe2\x96\x88" : top ? "\xe2\x96\x80" : bottom ? "\xe2\x96\x84" : " ";
            size_t n = strlen(cell);
            memcpy(o, cell, n);
            o += n;
        }
        memcpy(o, QRTERM_RESET "\n", sizeof QRTERM_RESET);
        o += sizeof QRTERM_RESET;
    }
    *o = '\0';
out:
    QRcode_free(qr);
    return out;
}
