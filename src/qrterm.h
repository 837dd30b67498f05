/* qrterm.h: a QR code drawn with text for a terminal (the command line's, not the library's). */
#ifndef TOKEND_QRTERM_H
#define TOKEND_QRTERM_H

/* Draws text as a QR code: lines of half blocks, black on white whatever the terminal's
 * colours (ANSI escapes), with a quiet zone. Returns the drawing (free it), or NULL when
 * the text cannot be encoded or memory ran out. */
char *qrterm_draw(const char *text);

#endif
