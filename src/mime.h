/* mime.h: media types by file extension: the system's /etc/mime.types, with a built-in fallback. */
#ifndef TOKEND_MIME_H
#define TOKEND_MIME_H

/* Reads path ("/etc/mime.types" when NULL) into the process's table, once; later calls do
 * nothing. Without the file, the built-in table of the web's common types is used. Returns
 * the number of extensions known. Thread-safe. */
int mime_load(const char *path);

/* The Content-Type for a file name, by its extension (case-insensitive): text types with
 * "; charset=utf-8"; "application/octet-stream" when unknown. Loads the table on first use. */
const char *mime_type(const char *name);

/* 1 when a body of this Content-Type gains from compression (text, JSON, XML, SVG,
 * JavaScript, WebAssembly); 0 for types that are compressed already (images, audio, video,
 * fonts, archives). */
int mime_compressible(const char *content_type);

#endif
