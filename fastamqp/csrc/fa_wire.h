/* fa_wire: the wire layer shared by the client engine (fa_io.c) and the relay
 * (fa_relay.c): a string-keyed hash map, a wake-up descriptor, the Open properties,
 * and the socket pumps between a file descriptor and a pn_connection_driver.
 *
 * Nothing here takes a lock or touches Python; every allocation is checked and
 * reported to the caller (-1 or NULL), never aborts.
 *
 * fa_wire.c is compiled into each extension that uses it (CMakeLists.txt); the
 * symbols are hidden so that two extensions loaded in one process never resolve
 * each other's copy.
 */
#ifndef FASTAMQP_FA_WIRE_H
#define FASTAMQP_FA_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <proton/connection.h>
#include <proton/connection_driver.h>

#define FA_WIRE_API __attribute__((visibility("hidden")))

/* A copy of s (NULL stays NULL); NULL also when out of memory. */
FA_WIRE_API char *fa_strdup(const char *s);

/* ---- fa_map: string keys (copied) to pointers, chained, growing by doubling ---- */

typedef struct fa_entry { char *key; void *value; struct fa_entry *next; } fa_entry;
typedef struct { fa_entry **buckets; size_t nbuckets, count; } fa_map;

/* 0, or -1 when out of memory (the map is then empty and safe to fa_map_free). */
FA_WIRE_API int fa_map_init(fa_map *m);
FA_WIRE_API void *fa_map_get(const fa_map *m, const char *key);
/* 0, or -1 when out of memory (the map is unchanged). *old (if not NULL) gets the
 * value replaced, or NULL. */
FA_WIRE_API int fa_map_put(fa_map *m, const char *key, void *value, void **old);
/* Removes key; returns its value, or NULL. */
FA_WIRE_API void *fa_map_del(fa_map *m, const char *key);
/* Calls fn(arg, value) on every value (fn may be NULL) and empties the map. */
FA_WIRE_API void fa_map_drain(fa_map *m, void (*fn)(void *, void *), void *arg);
/* Calls fn(arg, value) on every value; fn must not change the map. */
FA_WIRE_API void fa_map_each(const fa_map *m, void (*fn)(void *, void *), void *arg);
/* Empties the map (values untouched) and frees its buckets. */
FA_WIRE_API void fa_map_free(fa_map *m);

/* ---- fa_waker: wake a poll() loop from another thread ----------------------------
 * One write per batch of work: wake() writes only if no wake is pending; the loop
 * clears the pending flag after it has drained the descriptor, before it looks at
 * the work (so work queued after that look has written again). An eventfd, or a pipe
 * when another party (Python's select) reads it. */
typedef struct {
    int rfd, wfd;
    int pending;                       /* atomic */
} fa_waker;

/* 0, or -1 with errno set. */
FA_WIRE_API int fa_waker_init(fa_waker *w, bool use_pipe);
FA_WIRE_API void fa_waker_wake(fa_waker *w);
/* The loop's side: drain the descriptor, then clear the pending flag. */
FA_WIRE_API void fa_waker_clear(fa_waker *w);
/* Clear the pending flag only (the reader drains the descriptor itself). */
FA_WIRE_API void fa_waker_rearm(fa_waker *w);
FA_WIRE_API void fa_waker_close(fa_waker *w);

/* ---- connections -------------------------------------------------------------------- */

/* An Open's properties: a map of symbol keys to string values, from n key/value pairs
 * (kv[2i], kv[2i+1]). Nothing is written for n == 0. */
FA_WIRE_API void fa_put_properties(pn_connection_t *c, const char *const *kv, int n);

/* Small frames go out at once: AMQP is request/response at every level (credit,
 * dispositions), and Nagle's delay would be paid on each. */
FA_WIRE_API void fa_tcp_nodelay(int fd);

/* poll() events the driver wants on its socket: POLLIN while it has room to read,
 * POLLOUT while it has bytes to write. */
FA_WIRE_API short fa_driver_events(pn_connection_driver_t *d);

/* One send() of what the driver has to write. Returns the bytes written; 0 when there
 * is nothing to write or the socket is full; -1 after a socket error, which closes the
 * driver with "write failed: ..." (proton:io). */
FA_WIRE_API ssize_t fa_driver_write(pn_connection_driver_t *d, int fd);

/* One recv() into the driver's read buffer. Returns the bytes read (*full: the
 * buffer was filled, more may be waiting); 0 when nothing was read: no room, nothing
 * to read, the peer's end of stream (the driver's read side is closed), or a socket
 * error (the driver is closed with "read failed: ..."). */
FA_WIRE_API ssize_t fa_driver_read(pn_connection_driver_t *d, int fd, bool *full);

#endif
