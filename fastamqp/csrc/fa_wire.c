/* fa_wire.c: the wire layer shared by fa_io.c and fa_relay.c; see fa_wire.h. */
#define _GNU_SOURCE
#include "fa_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <proton/codec.h>

char *fa_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- fa_map ------------------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;   /* FNV-1a */
    while (*s) { h ^= (unsigned char)*s++; h *= 1099511628211ULL; }
    return h;
}

int fa_map_init(fa_map *m)
{
    m->count = 0;
    m->nbuckets = 64;                      /* a power of two: the hash is masked */
    m->buckets = calloc(m->nbuckets, sizeof(fa_entry *));
    if (!m->buckets) { m->nbuckets = 0; return -1; }
    return 0;
}

static fa_entry **map_slot(const fa_map *m, const char *key)
{
    fa_entry **p = &m->buckets[hash_str(key) & (m->nbuckets - 1)];
    while (*p && strcmp((*p)->key, key) != 0) p = &(*p)->next;
    return p;
}

void *fa_map_get(const fa_map *m, const char *key)
{
    if (!m->nbuckets) return NULL;
    fa_entry *e = *map_slot(m, key);
    return e ? e->value : NULL;
}

/* Out of memory here is harmless: the chains just stay longer. */
static void map_grow(fa_map *m)
{
    size_t n = m->nbuckets * 2, i;
    fa_entry **b = calloc(n, sizeof(fa_entry *));
    if (!b) return;
    for (i = 0; i < m->nbuckets; i++) {
        fa_entry *e = m->buckets[i];
        while (e) {
            fa_entry *next = e->next;
            size_t h = hash_str(e->key) & (n - 1);
            e->next = b[h];
            b[h] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

int fa_map_put(fa_map *m, const char *key, void *value, void **old)
{
    if (old) *old = NULL;
    if (!m->nbuckets) return -1;
    fa_entry **p = map_slot(m, key);
    if (*p) {
        if (old) *old = (*p)->value;
        (*p)->value = value;
        return 0;
    }
    fa_entry *e = malloc(sizeof *e);
    char *k = strdup(key);
    if (!e || !k) { free(e); free(k); return -1; }
    e->key = k;
    e->value = value;
    e->next = NULL;
    *p = e;
    if (++m->count > m->nbuckets * 2) map_grow(m);
    return 0;
}

void *fa_map_del(fa_map *m, const char *key)
{
    if (!m->nbuckets) return NULL;
    fa_entry **p = map_slot(m, key);
    fa_entry *e = *p;
    if (!e) return NULL;
    void *value = e->value;
    *p = e->next;
    free(e->key);
    free(e);
    m->count--;
    return value;
}

void fa_map_drain(fa_map *m, void (*fn)(void *, void *), void *arg)
{
    size_t i;
    for (i = 0; i < m->nbuckets; i++) {
        fa_entry *e = m->buckets[i];
        m->buckets[i] = NULL;
        while (e) {
            fa_entry *next = e->next;
            if (fn) fn(arg, e->value);
            free(e->key);
            free(e);
            e = next;
        }
    }
    m->count = 0;
}

void fa_map_each(const fa_map *m, void (*fn)(void *, void *), void *arg)
{
    size_t i;
    for (i = 0; i < m->nbuckets; i++) {
        fa_entry *e;
        for (e = m->buckets[i]; e; e = e->next) fn(arg, e->value);
    }
}

void fa_map_free(fa_map *m)
{
    fa_map_drain(m, NULL, NULL);
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = 0;
}

/* ---- fa_waker ----------------------------------------------------------------------- */

int fa_waker_init(fa_waker *w, bool use_pipe)
{
    w->pending = 0;
    if (use_pipe) {
        int fds[2];
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) { w->rfd = w->wfd = -1; return -1; }
        w->rfd = fds[0];
        w->wfd = fds[1];
    } else {
        w->rfd = w->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (w->rfd < 0) return -1;
    }
    return 0;
}

void fa_waker_wake(fa_waker *w)
{
    if (__atomic_exchange_n(&w->pending, 1, __ATOMIC_SEQ_CST)) return;
    /* An eventfd takes exactly 8 bytes; a pipe any. A full pipe or an eventfd at its
     * maximum is already readable: the wake-up is not lost. */
    uint64_t one = 1;
    ssize_t r = write(w->wfd, &one, w->rfd == w->wfd ? sizeof one : 1);
    (void)r;
}

void fa_waker_clear(fa_waker *w)
{
    char junk[64];
    /* Drain first, then rearm: a wake between the two finds pending still set and
     * writes nothing, and its work is seen because the loop looks after this. */
    while (read(w->rfd, junk, sizeof junk) > 0) {}
    fa_waker_rearm(w);
}

void fa_waker_rearm(fa_waker *w)
{
    __atomic_store_n(&w->pending, 0, __ATOMIC_SEQ_CST);
}

void fa_waker_close(fa_waker *w)
{
    if (w->rfd >= 0) close(w->rfd);
    if (w->wfd >= 0 && w->wfd != w->rfd) close(w->wfd);
    w->rfd = w->wfd = -1;
}

/* ---- connections -------------------------------------------------------------------- */

void fa_put_properties(pn_connection_t *c, const char *const *kv, int n)
{
    int i;
    if (n <= 0) return;
    pn_data_t *d = pn_connection_properties(c);
    pn_data_put_map(d);
    pn_data_enter(d);
    for (i = 0; i < n; i++) {
        const char *k = kv[2 * i], *v = kv[2 * i + 1];
        pn_data_put_symbol(d, pn_bytes(strlen(k), k));
        pn_data_put_string(d, pn_bytes(strlen(v), v));
    }
    pn_data_exit(d);
}

void fa_tcp_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

short fa_driver_events(pn_connection_driver_t *d)
{
    short ev = 0;
    if (pn_connection_driver_read_buffer(d).size) ev |= POLLIN;
    if (pn_connection_driver_write_buffer(d).size) ev |= POLLOUT;
    return ev;
}

static bool would_block(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

ssize_t fa_driver_write(pn_connection_driver_t *d, int fd)
{
    pn_bytes_t out = pn_connection_driver_write_buffer(d);
    if (!out.size) return 0;
    ssize_t n = send(fd, out.start, out.size, MSG_NOSIGNAL);
    if (n < 0) {
        if (would_block(errno)) return 0;
        pn_connection_driver_errorf(d, "proton:io", "write failed: %s", strerror(errno));
        pn_connection_driver_close(d);
        return -1;
    }
    pn_connection_driver_write_done(d, (size_t)n);
    return n;
}

ssize_t fa_driver_read(pn_connection_driver_t *d, int fd, bool *full)
{
    *full = false;
    pn_rwbytes_t in = pn_connection_driver_read_buffer(d);
    if (!in.size) return 0;
    ssize_t n = recv(fd, in.start, in.size, 0);
    if (n > 0) {
        pn_connection_driver_read_done(d, (size_t)n);
        *full = (size_t)n == in.size;
        return n;
    }
    if (n == 0) {
        pn_connection_driver_read_close(d);
    } else if (!would_block(errno)) {
        pn_connection_driver_errorf(d, "proton:io", "read failed: %s", strerror(errno));
        pn_connection_driver_close(d);
    }
    return 0;
}
