/* fa_relay.c: "fastamqp relay", the C data path of the embedded intermediary.
 *
 * Behaviour mirrors fastamqp/intermediary/routing.py (RouterCore / BrokerCore) and the
 * attach handling of server.py; read those first, the names here follow them:
 *   producer  a link on which a client sends to us (our receiver);
 *   consumer  a link on which we send to a client (our sender);
 *   origin    the producer's unsettled delivery, settled with the consumer's outcome
 *             (router) or ACCEPTED once enqueued (broker).
 *
 * Threading: everything below fa_relay_start's pthread_create runs on one thread that
 * owns all Proton objects. Other threads only read counters (relaxed atomics, single
 * writer) and ask the thread to stop through an eventfd.
 */
#define _GNU_SOURCE
#include "fa_relay.h"
#include "fa_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/connection_driver.h>
#include <proton/codec.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>

/* Distributions: fa_relay.h's FA_DIST_*, short names for the routing code. */
enum { D_CLOSEST = FA_DIST_CLOSEST, D_BALANCED = FA_DIST_BALANCED,
       D_MULTICAST = FA_DIST_MULTICAST, D_QUEUE = FA_DIST_QUEUE, D_TOPIC = FA_DIST_TOPIC };

typedef struct buf { int refs; size_t len; char data[]; } buf;

struct rlink;
struct conn;

typedef struct msg {
    buf *b;
    bool settled;                 /* forwarded pre-settled; nobody waits for an outcome */
    pn_delivery_t *origin;        /* producer's delivery, or NULL */
    struct rlink *producer;       /* while origin is set */
    struct msg *pprev, *pnext;    /* in producer->inflight */
    struct rlink *consumer;       /* while unsettled on a consumer */
    pn_delivery_t *out;
    struct msg *cprev, *cnext;    /* in consumer->unsettled */
    struct msg *qnext;            /* in a fifo */
} msg;

typedef struct fifo { msg *head, *tail; size_t n; } fifo;

typedef struct node {
    char *name;                   /* normalized address */
    int dist;
    struct rlink **cons; int ncons, capcons;
    struct rlink **prods; int nprods, capprods;
    int rr;
    bool temp, subscription;
    fifo msgs;                    /* broker queue */
    struct node **subs; int nsubs, capsubs;  /* broker topic: subscription queues */
    struct node *topic;           /* subscription queue: its topic node */
    char *shared_name;            /* shared subscription queue: its link name */
} node;

typedef struct rlink {
    pn_link_t *link;
    struct conn *conn;
    struct rlink *lprev, *lnext;  /* in conn->links */
    node *node;                   /* router: the address; broker: queue (consumer) or
                                     queue/topic (producer) */
    bool producer, presettled, dirty;
    struct rlink *dprev, *dnext;  /* in r->dirty while dirty */
    int dist;
    int held;                     /* producer: ours unsettled, not yet settled by us
                                     (they hold credit, as in qdrouterd) */
    msg *inflight;                /* producer: messages still pointing at us */
    fifo undelivered;             /* router consumer */
    msg *unsettled; msg *unsettled_tail; int nunsettled;  /* consumer */
    char *partial; size_t plen, pcap;  /* producer: a multi-frame message so far */
    bool discarding;              /* producer: no memory for the message being read */
} rlink;

typedef struct conn {
    int fd;
    pn_connection_driver_t driver;
    rlink *links;
    struct conn *prev, *next;
    bool finished;
} conn;

struct fa_relay {
    int mode, window;
    char *host, *container_id, *product, *version, *router_id;
    /* The address table (routing.AddressTable: entries longest first, first match
     * wins) and its default, handed in by relay.py; read-only once made. */
    struct { char *prefix; int dist; } *routes;
    int nroutes, default_dist;
    int port;
    int lfd;
    fa_waker stop_wake;
    pthread_t thread;
    bool started;
    volatile int stopping;
    int exited;            /* the thread has left its loop (stop, or poll() failed) */
    int64_t accept_after;  /* out of descriptors: leave the listener alone until then */
    conn *conns;
    /* poll() arrays, grown as connections are accepted so the loop never has to. */
    struct pollfd *fds;
    conn **owners;
    size_t fdcap, nconns;
    fa_map nodes;                 /* normalized address -> node (not subscriptions) */
    rlink *dirty;                 /* producers whose credit may need topping up */
    uint64_t tagseq;
    uint64_t ctr[FA_RC_COUNT];
};

/* Single writer (the relay thread): a relaxed store is enough for readers to see a
 * whole value; no read-modify-write atomics on the hot path. */
#define BUMPN(r, i, n) __atomic_store_n(&(r)->ctr[i], (r)->ctr[i] + (uint64_t)(n), __ATOMIC_RELAXED)
#define BUMP(r, i) BUMPN(r, i, 1)
#define DROPN(r, i, n) __atomic_store_n(&(r)->ctr[i], (r)->ctr[i] - (uint64_t)(n), __ATOMIC_RELAXED)

/* Out of memory, nothing here aborts: a link that cannot be set up is refused
 * (amqp:resource-limit-exceeded), a message that cannot be stored is released to its
 * producer (dropped if pre-settled, counted), a connection that cannot be set up is
 * closed at once. */

/* 0, or -1 when out of memory (the array is unchanged). */
static int push_ptr(void ***arr, int *n, int *cap, void *p)
{
    if (*n == *cap) {
        int ncap = *cap ? *cap * 2 : 4;
        void **a = realloc(*arr, (size_t)ncap * sizeof(void *));
        if (!a) return -1;
        *arr = a;
        *cap = ncap;
    }
    (*arr)[(*n)++] = p;
    return 0;
}

static int remove_ptr(void **arr, int *n, void *p)
{
    for (int i = 0; i < *n; i++) {
        if (arr[i] == p) {
            memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof(void *));
            (*n)--;
            return i;
        }
    }
    return -1;
}

/* ---------------------------------------------------------------- messages ---- */

static void buf_unref(buf *b) { if (b && --b->refs == 0) free(b); }

/* NULL when out of memory. */
static msg *msg_new(buf *b, bool settled)
{
    msg *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->b = b;
    b->refs++;
    m->settled = settled;
    return m;
}

static void prod_unlink(msg *m)
{
    rlink *p = m->producer;
    if (!p) return;
    if (m->pprev) m->pprev->pnext = m->pnext; else p->inflight = m->pnext;
    if (m->pnext) m->pnext->pprev = m->pprev;
    m->pprev = m->pnext = NULL;
    m->producer = NULL;
}

static void prod_link(msg *m, rlink *p)
{
    m->producer = p;
    m->pprev = NULL;
    m->pnext = p->inflight;
    if (p->inflight) p->inflight->pprev = m;
    p->inflight = m;
}

static void cons_unlink(msg *m)
{
    rlink *c = m->consumer;
    if (!c) return;
    if (m->cprev) m->cprev->cnext = m->cnext; else c->unsettled = m->cnext;
    if (m->cnext) m->cnext->cprev = m->cprev; else c->unsettled_tail = m->cprev;
    m->cprev = m->cnext = NULL;
    m->consumer = NULL;
    c->nunsettled--;
    if (m->out) pn_delivery_set_context(m->out, NULL);
    m->out = NULL;
}

static void cons_link(msg *m, rlink *c, pn_delivery_t *d)
{
    m->consumer = c;
    m->out = d;
    pn_delivery_set_context(d, m);
    m->cnext = NULL;
    m->cprev = c->unsettled_tail;
    if (c->unsettled_tail) c->unsettled_tail->cnext = m; else c->unsettled = m;
    c->unsettled_tail = m;
    c->nunsettled++;
}

static void msg_free(msg *m)
{
    prod_unlink(m);
    cons_unlink(m);
    buf_unref(m->b);
    free(m);
}

static void fifo_push(fa_relay *r, fifo *f, msg *m)
{
    m->qnext = NULL;
    if (f->tail) f->tail->qnext = m; else f->head = m;
    f->tail = m;
    f->n++;
    BUMP(r, FA_RC_STORED);
}

static void fifo_push_front(fa_relay *r, fifo *f, msg *m)
{
    m->qnext = f->head;
    f->head = m;
    if (!f->tail) f->tail = m;
    f->n++;
    BUMP(r, FA_RC_STORED);
}

static msg *fifo_pop(fa_relay *r, fifo *f)
{
    msg *m = f->head;
    if (!m) return NULL;
    f->head = m->qnext;
    if (!f->head) f->tail = NULL;
    m->qnext = NULL;
    f->n--;
    DROPN(r, FA_RC_STORED, 1);
    return m;
}

/* ---------------------------------------------------------------- addresses ---- */

static const char *normalize(const char *a)
{
    if (strncmp(a, "amqp:/", 6) == 0 && strncmp(a, "amqp://", 7) != 0) return a + 6;
    return a;
}

static bool prefix_matches(const char *prefix, const char *address)
{
    size_t n = strlen(prefix);
    if (strncmp(address, prefix, n) != 0) return false;
    return address[n] == 0 || n == 0 || address[n] == '.' || address[n] == '/' ||
           prefix[n - 1] == '.' || prefix[n - 1] == '/';
}

static int table_lookup(fa_relay *r, const char *address)
{
    for (int i = 0; i < r->nroutes; i++)
        if (prefix_matches(r->routes[i].prefix, address)) return r->routes[i].dist;
    return r->default_dist;
}

static node *node_find(fa_relay *r, const char *name)
{
    return fa_map_get(&r->nodes, name);
}

/* NULL when out of memory. */
static node *node_alloc(const char *name, int dist)
{
    node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    if (!(n->name = strdup(name))) { free(n); return NULL; }
    n->dist = dist;
    return n;
}

static void node_destroy(fa_relay *r, node *n);

/* NULL when out of memory. */
static node *node_insert(fa_relay *r, const char *name, int dist)
{
    node *n = node_alloc(name, dist);
    if (n && fa_map_put(&r->nodes, name, n, NULL) != 0) {
        node_destroy(r, n);
        return NULL;
    }
    return n;
}

static void node_destroy(fa_relay *r, node *n)
{
    msg *m;
    while ((m = fifo_pop(r, &n->msgs))) msg_free(m);
    free(n->cons);
    free(n->prods);
    free(n->subs);
    free(n->shared_name);
    free(n->name);
    free(n);
}

static void node_unhash(fa_relay *r, node *n)
{
    fa_map_del(&r->nodes, n->name);
}

/* A router node, or a broker topic node, with nothing attached is forgotten. */
static void node_maybe_gc(fa_relay *r, node *n)
{
    if (n->ncons || n->nprods || n->nsubs || n->msgs.n) return;
    if (r->mode == FA_RELAY_BROKER && n->dist == D_QUEUE && !n->temp) return;
    node_unhash(r, n);
    node_destroy(r, n);
}

static void random_hex(char *out, size_t nhex)
{
    unsigned char raw[32];
    size_t nb = (nhex + 1) / 2;
    if (getrandom(raw, nb, 0) != (ssize_t)nb) {
        /* No entropy source: still unique within this process. */
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        for (size_t i = 0; i < nb; i++) raw[i] = (unsigned char)(ts.tv_nsec >> (i % 4 * 8)) ^ (unsigned char)rand();
    }
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < nhex; i++) out[i] = hx[(raw[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    out[nhex] = 0;
}

/* What server.py gets from core.dynamic_address(); NULL when out of memory. */
static char *dynamic_address(fa_relay *r)
{
    char hex[33];
    char *out;
    for (;;) {
        random_hex(hex, 32);
        if (r->mode == FA_RELAY_ROUTER) {
            hex[12] = 0;
            size_t n = strlen(r->router_id) + 64;
            if (!(out = malloc(n))) return NULL;
            snprintf(out, n, "amqp:/_topo/0/%s/temp.%s", r->router_id, hex);
        } else {
            /* A UUID4 string, as qpidd (and BrokerCore) name temporary queues. */
            hex[12] = '4';
            static const char v[] = "89ab";
            hex[16] = v[hex[16] % 4];
            if (!(out = malloc(37))) return NULL;
            snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
                     hex + 16, hex + 20);
        }
        const char *key = normalize(out);
        node *n = node_find(r, key);
        if (!n) {
            n = node_insert(r, key, r->mode == FA_RELAY_ROUTER ? D_CLOSEST : D_QUEUE);
            if (!n) { free(out); return NULL; }
            n->temp = true;
            return out;
        }
        free(out);   /* astronomically unlikely clash: draw again */
    }
}

/* ---------------------------------------------------------------- wire port ---- */

/* An intrusive list: marking a producer never needs memory. */
static void mark_dirty(fa_relay *r, rlink *p)
{
    if (p->dirty) return;
    p->dirty = true;
    p->dprev = NULL;
    p->dnext = r->dirty;
    if (r->dirty) r->dirty->dprev = p;
    r->dirty = p;
}

static void unmark_dirty(fa_relay *r, rlink *p)
{
    if (!p->dirty) return;
    if (p->dprev) p->dprev->dnext = p->dnext; else r->dirty = p->dnext;
    if (p->dnext) p->dnext->dprev = p->dprev;
    p->dprev = p->dnext = NULL;
    p->dirty = false;
}

static void dirty_node(fa_relay *r, node *n)
{
    for (int i = 0; i < n->nprods; i++) mark_dirty(r, n->prods[i]);
}

/* Settle the producer's delivery with the state of `from` (a consumer's delivery), or
 * with the plain outcome `type` when from is NULL. */
static void settle_origin(fa_relay *r, msg *m, uint64_t type, pn_delivery_t *from)
{
    if (m->settled || !m->origin) return;
    pn_delivery_t *o = m->origin;
    m->origin = NULL;
    rlink *p = m->producer;
    prod_unlink(m);
    if (!p) return;   /* producer gone: nobody to answer */
    /* qdrouterd replenishes a producer's credit when its delivery is settled. */
    p->held--;
    mark_dirty(r, p);
    switch (type) {
    case PN_ACCEPTED: BUMP(r, FA_RC_ACCEPTED); break;
    case PN_RELEASED: BUMP(r, FA_RC_RELEASED); break;
    case PN_REJECTED: BUMP(r, FA_RC_REJECTED); break;
    case PN_MODIFIED: BUMP(r, FA_RC_MODIFIED); break;
    }
    if (!from && type == PN_MODIFIED)
        pn_disposition_set_failed(pn_delivery_local(o), true);
    if (from) {
        pn_disposition_t *local = pn_delivery_local(o), *remote = pn_delivery_remote(from);
        if (type == PN_REJECTED) {
            pn_condition_copy(pn_disposition_condition(local), pn_disposition_condition(remote));
        } else if (type == PN_MODIFIED) {
            pn_disposition_set_failed(local, pn_disposition_is_failed(remote));
            pn_disposition_set_undeliverable(local, pn_disposition_is_undeliverable(remote));
            pn_data_t *ann = pn_disposition_annotations(remote);
            if (ann && pn_data_size(ann)) pn_data_copy(pn_disposition_annotations(local), ann);
        }
    }
    pn_delivery_update(o, type);
    pn_delivery_settle(o);
}

static pn_delivery_t *transmit(fa_relay *r, rlink *c, msg *m, bool settled)
{
    uint64_t tag = ++r->tagseq;
    pn_delivery_t *d = pn_delivery(c->link, pn_dtag((const char *)&tag, sizeof tag));
    pn_link_send(c->link, m->b->data, m->b->len);
    pn_link_advance(c->link);
    if (settled) pn_delivery_settle(d);
    BUMP(r, FA_RC_FORWARDED);
    return d;
}

/* ---------------------------------------------------------------- router ---- */

/* Every message a router drops is pre-settled (an unsettled one is released). */
static void router_drop(fa_relay *r)
{
    BUMP(r, FA_RC_DROPPED);
    BUMP(r, FA_RC_DROPPED_PRESETTLED);
}

static void router_pump(fa_relay *r, rlink *c)
{
    while (pn_link_credit(c->link) > 0 && c->undelivered.n) {
        msg *m = fifo_pop(r, &c->undelivered);
        bool settled = m->settled || c->presettled || c->dist == D_MULTICAST;
        pn_delivery_t *d = transmit(r, c, m, settled);
        if (!settled) {
            cons_link(m, c, d);
        } else {
            /* The consumer asked for pre-settled deliveries: the router takes the
             * message off the producer's hands. */
            settle_origin(r, m, PN_ACCEPTED, NULL);
            msg_free(m);
        }
    }
}

static rlink *router_choose(node *n)
{
    int cnt = n->ncons;
    int start = n->rr % cnt, chosen = start;
    if (n->dist == D_BALANCED) {
        size_t best_load = 0; int best = -1;
        for (int i = 0; i < cnt; i++) {
            int k = (start + i) % cnt;
            rlink *c = n->cons[k];
            size_t load = c->undelivered.n + (size_t)c->nunsettled;
            if (best < 0 || load < best_load) {
                best = k; best_load = load;
                if (load == 0) break;
            }
        }
        chosen = best;
    }
    n->rr = chosen + 1;
    return n->cons[chosen];
}

/* RouterCore._enqueue: qdrouterd's qdr_forward_deliver_CT. A pre-settled message
 * meeting an undelivered list of window (linkCapacity) or more first discards every
 * pre-settled message on it but the head (qdr_forward_drop_presettled_CT_LH). */
static void router_enqueue(fa_relay *r, rlink *c, msg *m)
{
    fifo *f = &c->undelivered;
    if (m->settled && f->n >= (size_t)r->window) {
        msg *prev = f->head;
        while (prev && prev->qnext) {
            msg *old = prev->qnext;
            if (!old->settled) { prev = old; continue; }
            prev->qnext = old->qnext;
            if (f->tail == old) f->tail = prev;
            f->n--;
            DROPN(r, FA_RC_STORED, 1);
            router_drop(r);
            msg_free(old);
        }
    }
    fifo_push(r, f, m);
    router_pump(r, c);
}

static void router_route(fa_relay *r, rlink *p, msg *m)
{
    node *n = p->node;
    /* A pre-settled message's credit comes back once it is routed (or dropped). */
    mark_dirty(r, p);
    if (!n->ncons) {
        if (m->settled) router_drop(r);
        else settle_origin(r, m, PN_RELEASED, NULL);
        msg_free(m);
        return;
    }
    if (p->dist == D_MULTICAST) {
        /* Forwarded pre-settled to every consumer; the router answers the producer. */
        settle_origin(r, m, PN_ACCEPTED, NULL);
        for (int i = 0; i < n->ncons; i++) {
            msg *copy = msg_new(m->b, true);
            if (copy) router_enqueue(r, n->cons[i], copy);
            else router_drop(r);       /* out of memory: this consumer's copy is lost */
        }
        msg_free(m);
        return;
    }
    router_enqueue(r, router_choose(n), m);
}

/* ---------------------------------------------------------------- broker ---- */

static void broker_pump(fa_relay *r, node *q)
{
    int n = q->ncons;
    while (q->msgs.n && n) {
        bool sent = false;
        for (int i = 0; i < n; i++) {
            rlink *c = q->cons[(q->rr + i) % n];
            if (pn_link_credit(c->link) > 0) {
                q->rr = (q->rr + i + 1) % n;
                msg *m = fifo_pop(r, &q->msgs);
                pn_delivery_t *d = transmit(r, c, m, c->presettled);
                if (c->presettled) msg_free(m);
                else cons_link(m, c, d);
                sent = true;
                break;
            }
        }
        if (!sent) return;
    }
}

static void broker_route(fa_relay *r, rlink *p, msg *m)
{
    node *n = p->node;
    if (n->dist == D_TOPIC) {
        if (!n->nsubs) BUMP(r, FA_RC_DROPPED);
        for (int i = 0; i < n->nsubs; i++) {
            msg *copy = msg_new(m->b, true);
            if (!copy) { BUMP(r, FA_RC_DROPPED); continue; }   /* out of memory */
            fifo_push(r, &n->subs[i]->msgs, copy);
            BUMP(r, FA_RC_ENQUEUED);
        }
        settle_origin(r, m, PN_ACCEPTED, NULL);
        msg_free(m);
        for (int i = 0; i < n->nsubs; i++) broker_pump(r, n->subs[i]);
    } else {
        settle_origin(r, m, PN_ACCEPTED, NULL);
        /* The broker owns the message now; forget the producer's delivery. */
        prod_unlink(m);
        m->settled = true;
        fifo_push(r, &n->msgs, m);
        BUMP(r, FA_RC_ENQUEUED);
        broker_pump(r, n);
    }
    mark_dirty(r, p);
}

/* ---------------------------------------------------------------- links ---- */

static void conn_add_link(conn *cn, rlink *l)
{
    l->conn = cn;
    l->lprev = NULL;
    l->lnext = cn->links;
    if (cn->links) cn->links->lprev = l;
    cn->links = l;
}

static void conn_remove_link(conn *cn, rlink *l)
{
    if (l->lprev) l->lprev->lnext = l->lnext; else cn->links = l->lnext;
    if (l->lnext) l->lnext->lprev = l->lprev;
}

static void refuse(pn_link_t *link, const char *name, const char *desc)
{
    /* A null terminus in our attach, then a detach with the error: how AMQP says the
     * node cannot be reached. */
    pn_link_open(link);
    pn_condition_set_name(pn_link_condition(link), name);
    pn_condition_set_description(pn_link_condition(link), desc);
    pn_link_close(link);
}

/* Whether a terminus lists this capability (one symbol, or an array of them). */
static bool has_capability(pn_terminus_t *t, const char *cap)
{
    pn_data_t *d = pn_terminus_capabilities(t);
    size_t len = strlen(cap);
    bool found = false;
    pn_data_rewind(d);
    if (!pn_data_next(d)) return false;
    if (pn_data_type(d) == PN_SYMBOL) {
        pn_bytes_t b = pn_data_get_symbol(d);
        return b.size == len && !memcmp(b.start, cap, len);
    }
    if (pn_data_type(d) != PN_ARRAY) return false;
    pn_data_enter(d);
    while (!found && pn_data_next(d)) {
        if (pn_data_type(d) != PN_SYMBOL) continue;
        pn_bytes_t b = pn_data_get_symbol(d);
        found = b.size == len && !memcmp(b.start, cap, len);
    }
    pn_data_exit(d);
    return found;
}

/* A broker topic's subscription queue for a new consumer link (BrokerCore); NULL when
 * out of memory. */
static node *subscription_queue(fa_relay *r, node *topic, pn_link_t *link, const char *key)
{
    pn_terminus_t *source = pn_link_remote_source(link);
    const char *shared = has_capability(source, "shared") ? pn_link_name(link) : NULL;
    node *q;
    /* qpidd: a "shared" source consumes from the queue named by its link name,
     * made by the first such link; later links of that name compete on it. (qpidd's
     * queue names are global; looking only among this topic's subscriptions differs
     * only for one link name used on two topics.) */
    for (int i = 0; shared && i < topic->nsubs; i++) {
        q = topic->subs[i];
        if (q->shared_name && !strcmp(q->shared_name, shared)) return q;
    }
    q = node_alloc(key, D_QUEUE);
    if (!q) return NULL;
    q->subscription = true;
    q->topic = topic;
    if (shared) {
        if (!(q->shared_name = strdup(shared))) { node_destroy(r, q); return NULL; }
        /* Its queue outlives its consumers only if the source never expires. */
        q->temp = pn_terminus_get_expiry_policy(source) != PN_EXPIRE_NEVER;
    } else {
        /* A private subscription queue per subscriber, like qpidd's exchange
         * bindings; it dies with the link. */
        q->temp = true;
    }
    if (push_ptr((void ***)&topic->subs, &topic->nsubs, &topic->capsubs, q) != 0) {
        node_destroy(r, q);
        return NULL;
    }
    return q;
}

/* Out of memory while setting up a link: refused, as qdrouterd refuses what it has no
 * resources for. */
static void refuse_for_memory(pn_link_t *link)
{
    refuse(link, "amqp:resource-limit-exceeded", "out of memory");
}

static void on_link_open(fa_relay *r, conn *cn, pn_link_t *link)
{
    if (!(pn_link_state(link) & PN_LOCAL_UNINIT)) return;
    bool is_rcv = pn_link_is_receiver(link);
    pn_terminus_t *remote = is_rcv ? pn_link_remote_target(link) : pn_link_remote_source(link);
    char *owned = NULL;
    const char *address;
    if (pn_terminus_is_dynamic(remote)) {
        address = owned = dynamic_address(r);
        if (!address) { refuse_for_memory(link); return; }
    } else {
        address = pn_terminus_get_address(remote);
        if (!address) {
            if (is_rcv) refuse(link, "amqp:not-implemented", "anonymous relay is not supported");
            else refuse(link, "amqp:invalid-field", "source address required");
            return;
        }
    }
    const char *key = normalize(address);
    rlink *l = calloc(1, sizeof *l);
    node *n = node_find(r, key), *q = NULL;
    int dist;
    if (r->mode == FA_RELAY_ROUTER) dist = (n && n->temp) ? D_CLOSEST : table_lookup(r, key);
    else dist = (n && n->dist == D_QUEUE) ? D_QUEUE : table_lookup(r, key);
    if (l && !n) n = node_insert(r, key, dist);
    if (l && n) {
        /* Every allocation the link needs, before anything is attached. */
        int nsubs = n->nsubs;
        if (is_rcv) {
            q = push_ptr((void ***)&n->prods, &n->nprods, &n->capprods, l) == 0 ? n : NULL;
        } else {
            q = (r->mode == FA_RELAY_BROKER && dist == D_TOPIC)
                ? subscription_queue(r, n, link, key) : n;
            if (q && push_ptr((void ***)&q->cons, &q->ncons, &q->capcons, l) != 0) {
                if (n->nsubs > nsubs) {        /* made for this link: undo */
                    remove_ptr((void **)n->subs, &n->nsubs, q);
                    node_destroy(r, q);
                }
                q = NULL;
            }
        }
    }
    if (!q) {
        free(l);
        if (n) node_maybe_gc(r, n);
        free(owned);
        refuse_for_memory(link);
        return;
    }
    pn_terminus_copy(pn_link_source(link), pn_link_remote_source(link));
    pn_terminus_copy(pn_link_target(link), pn_link_remote_target(link));
    pn_terminus_set_address(is_rcv ? pn_link_target(link) : pn_link_source(link), address);
    pn_link_set_snd_settle_mode(link, pn_link_remote_snd_settle_mode(link));

    l->link = link;
    l->producer = is_rcv;
    l->dist = dist;
    l->node = q;
    pn_link_set_context(link, l);
    conn_add_link(cn, l);
    BUMP(r, FA_RC_LINKS);
    BUMP(r, FA_RC_LINKS_TOTAL);
    if (is_rcv) {
        /* We settle first and always answer with an outcome. */
        pn_link_set_rcv_settle_mode(link, PN_RCV_FIRST);
        pn_link_open(link);
        mark_dirty(r, l);
    } else {
        pn_link_open(link);
        l->presettled = pn_link_remote_snd_settle_mode(link) == PN_SND_SETTLED;
        if (r->mode == FA_RELAY_BROKER) broker_pump(r, q);
        else if (q->ncons == 1) dirty_node(r, q);   /* DISPATCH-1012 / -1481: the
                                                     * address just became reachable */
    }
    free(owned);
}

static void link_gone(fa_relay *r, rlink *l)
{
    node *n = l->node;
    conn_remove_link(l->conn, l);
    pn_link_set_context(l->link, NULL);
    DROPN(r, FA_RC_LINKS, 1);
    unmark_dirty(r, l);
    if (l->producer) {
        /* Messages of ours still in transit lose their way back: nobody to answer. */
        while (l->inflight) {
            msg *m = l->inflight;
            m->origin = NULL;
            prod_unlink(m);
        }
        remove_ptr((void **)n->prods, &n->nprods, l);
        free(l->partial);
        free(l);
        node_maybe_gc(r, n);
        return;
    }
    remove_ptr((void **)n->cons, &n->ncons, l);
    if (r->mode == FA_RELAY_ROUTER) {
        if (!n->ncons) n->temp = false;
        /* Nothing is stored in a router: what this consumer held goes back to its
         * producers (released if they wait for an outcome, else lost). */
        msg *m;
        while ((m = fifo_pop(r, &l->undelivered))) {
            if (m->settled) router_drop(r);
            else settle_origin(r, m, PN_RELEASED, NULL);
            msg_free(m);
        }
        while ((m = l->unsettled)) {
            /* The consumer had it and may have acted on it: qdrouterd 1.19 answers
             * modified, delivery-failed (checked side by side). */
            pn_delivery_t *d = m->out;
            cons_unlink(m);
            if (d) pn_delivery_settle(d);
            settle_origin(r, m, PN_MODIFIED, NULL);
            msg_free(m);
        }
        dirty_node(r, n);
        free(l);
        node_maybe_gc(r, n);
        return;
    }
    /* Broker: in-flight messages go back to the head, in their original order. */
    msg *m;
    while ((m = l->unsettled_tail)) {
        pn_delivery_t *d = m->out;
        cons_unlink(m);
        if (d) pn_delivery_settle(d);
        fifo_push_front(r, &n->msgs, m);
        BUMP(r, FA_RC_REQUEUED);
    }
    free(l);
    if (n->temp && !n->ncons) {
        if (n->msgs.n) BUMPN(r, FA_RC_DROPPED, n->msgs.n);
        if (n->subscription) {
            node *t = n->topic;
            remove_ptr((void **)t->subs, &t->nsubs, n);
            node_destroy(r, n);
            node_maybe_gc(r, t);
        } else if (n->nprods) {
            /* BrokerCore deletes the temporary queue, and the next message of a
             * producer still attached to its name makes an ordinary queue again:
             * the same as keeping this node, emptied, as an ordinary queue. */
            msg *m2;
            while ((m2 = fifo_pop(r, &n->msgs))) msg_free(m2);
            n->temp = false;
        } else {
            node_unhash(r, n);
            node_destroy(r, n);
        }
    } else {
        broker_pump(r, n);
    }
}

/* ---------------------------------------------------------------- deliveries ---- */

static void on_incoming(fa_relay *r, pn_link_t *link, pn_delivery_t *d)
{
    rlink *p = pn_link_get_context(link);
    if (pn_delivery_aborted(d)) {
        pn_delivery_settle(d);
        if (p) { p->plen = 0; p->discarding = false; mark_dirty(r, p); }
        return;
    }
    if (!pn_delivery_readable(d)) return;   /* a state update on one already taken */
    if (!p) {
        /* A link we closed or refused: nobody will route this. */
        if (!pn_delivery_partial(d)) {
            char sink[4096];
            while (pn_link_recv(link, sink, sizeof sink) > 0) {}
            pn_link_advance(link);
            if (!pn_delivery_settled(d)) pn_delivery_update(d, PN_RELEASED);
            pn_delivery_settle(d);
        }
        return;
    }
    size_t pending = pn_delivery_pending(d);
    if (!p->discarding && p->plen + pending > p->pcap) {
        size_t cap = p->pcap ? p->pcap : 1024;
        while (cap < p->plen + pending) cap *= 2;
        char *nb = realloc(p->partial, cap);
        if (nb) { p->partial = nb; p->pcap = cap; }
        else p->discarding = true;
    }
    while (!p->discarding) {
        if (p->plen == p->pcap) {
            size_t cap = p->pcap ? p->pcap * 2 : 1024;
            char *nb = realloc(p->partial, cap);
            if (!nb) { p->discarding = true; break; }
            p->partial = nb; p->pcap = cap;
        }
        ssize_t n = pn_link_recv(link, p->partial + p->plen, p->pcap - p->plen);
        if (n <= 0) break;
        p->plen += (size_t)n;
    }
    if (p->discarding) {
        /* No room for this message: read it to its end, then give it back. */
        char sink[4096];
        while (pn_link_recv(link, sink, sizeof sink) > 0) {}
        p->plen = 0;
    }
    if (pn_delivery_partial(d)) return;
    buf *b = p->discarding ? NULL : malloc(sizeof(buf) + p->plen);
    if (b) b->refs = 0;
    msg *m = b ? msg_new(b, pn_delivery_settled(d)) : NULL;
    if (!m) {
        /* Out of memory: released to its producer, or dropped if pre-settled. */
        free(b);
        p->discarding = false;
        p->plen = 0;
        pn_link_advance(link);
        BUMP(r, FA_RC_RECEIVED);
        if (pn_delivery_settled(d)) {
            BUMP(r, FA_RC_DROPPED);
        } else {
            pn_delivery_update(d, PN_RELEASED);
            BUMP(r, FA_RC_RELEASED);
        }
        pn_delivery_settle(d);
        mark_dirty(r, p);
        return;
    }
    b->len = p->plen;
    memcpy(b->data, p->partial, p->plen);
    p->plen = 0;
    if (p->pcap > 65536) { free(p->partial); p->partial = NULL; p->pcap = 0; }
    pn_link_advance(link);
    bool settled = m->settled;
    if (settled) pn_delivery_settle(d);
    if (!settled) {
        m->origin = d;
        prod_link(m, p);
        p->held++;
    }
    BUMP(r, FA_RC_RECEIVED);
    if (r->mode == FA_RELAY_ROUTER) router_route(r, p, m);
    else broker_route(r, p, m);
}

static void on_outcome(fa_relay *r, pn_delivery_t *d)
{
    uint64_t type = pn_delivery_remote_state(d);
    bool terminal = type == PN_ACCEPTED || type == PN_REJECTED || type == PN_RELEASED ||
                    type == PN_MODIFIED;
    if (!terminal && !pn_delivery_settled(d)) return;   /* received / no state yet */
    if (!terminal) type = PN_ACCEPTED;   /* settled without an outcome: done with it */
    msg *m = pn_delivery_get_context(d);
    if (!m) { pn_delivery_settle(d); return; }
    if (r->mode == FA_RELAY_ROUTER) {
        settle_origin(r, m, type, d);
        cons_unlink(m);
        pn_delivery_settle(d);
        msg_free(m);
        return;
    }
    node *q = m->consumer->node;
    cons_unlink(m);
    pn_delivery_settle(d);
    if (type == PN_ACCEPTED) {
        BUMP(r, FA_RC_ACKNOWLEDGED);
        msg_free(m);
    } else if (type == PN_RELEASED || type == PN_MODIFIED) {
        fifo_push_front(r, &q->msgs, m);
        BUMP(r, FA_RC_REQUEUED);
        broker_pump(r, q);
    } else {
        /* qpidd would route to an alternate exchange if one were configured. */
        BUMP(r, FA_RC_DROPPED);
        msg_free(m);
    }
}

static void on_flow(fa_relay *r, pn_link_t *link)
{
    rlink *c = pn_link_get_context(link);
    if (!c || c->producer) return;
    if (r->mode == FA_RELAY_ROUTER) router_pump(r, c);
    else broker_pump(r, c->node);
    if (pn_link_get_drain(link) && pn_link_credit(link) > 0) pn_link_drained(link);
}

static int desired_credit(fa_relay *r, rlink *p)
{
    if (r->mode == FA_RELAY_BROKER) return r->window;
    if (!p->node->ncons) return 0;   /* anycast: DISPATCH-1012; multicast: -1481 */
    int w = r->window - p->held;
    return w > 0 ? w : 0;
}

static bool topup_dirty(fa_relay *r)
{
    bool any = r->dirty != NULL;
    while (r->dirty) {
        rlink *p = r->dirty;
        unmark_dirty(r, p);
        int want = desired_credit(r, p), have = pn_link_credit(p->link);
        if (want > have) pn_link_flow(p->link, want - have);
    }
    return any;
}

/* ---------------------------------------------------------------- connections ---- */

static void conn_links_gone(fa_relay *r, conn *cn, pn_session_t *ssn)
{
    rlink *l = cn->links;
    while (l) {
        rlink *next = l->lnext;
        if (!ssn || pn_link_session(l->link) == ssn) link_gone(r, l);
        l = next;
    }
}

static void dispatch(fa_relay *r, conn *cn, pn_event_t *e)
{
    switch (pn_event_type(e)) {
    case PN_DELIVERY: {
        pn_delivery_t *d = pn_event_delivery(e);
        pn_link_t *link = pn_delivery_link(d);
        if (pn_link_is_receiver(link)) on_incoming(r, link, d);
        else on_outcome(r, d);
        break;
    }
    case PN_LINK_FLOW:
        on_flow(r, pn_event_link(e));
        break;
    case PN_LINK_REMOTE_OPEN:
        on_link_open(r, cn, pn_event_link(e));
        break;
    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH: {
        pn_link_t *link = pn_event_link(e);
        rlink *l = pn_link_get_context(link);
        if (l) link_gone(r, l);
        if (pn_link_state(link) & PN_LOCAL_ACTIVE) {
            if (pn_event_type(e) == PN_LINK_REMOTE_CLOSE) pn_link_close(link);
            else pn_link_detach(link);
        }
        break;
    }
    case PN_SESSION_REMOTE_OPEN: {
        pn_session_t *s = pn_event_session(e);
        if (pn_session_state(s) & PN_LOCAL_UNINIT) pn_session_open(s);
        break;
    }
    case PN_SESSION_REMOTE_CLOSE: {
        /* Proton raises no per-link events for links ended by their session. */
        pn_session_t *s = pn_event_session(e);
        conn_links_gone(r, cn, s);
        if (pn_session_state(s) & PN_LOCAL_ACTIVE) pn_session_close(s);
        break;
    }
    case PN_CONNECTION_REMOTE_OPEN: {
        pn_connection_t *c = pn_event_connection(e);
        if (pn_connection_state(c) & PN_LOCAL_UNINIT) {
            pn_connection_set_container(c, r->container_id);
            const char *props[] = {"product", r->product, "version", r->version};
            fa_put_properties(c, props, 2);
            pn_connection_open(c);
        }
        break;
    }
    case PN_CONNECTION_REMOTE_CLOSE: {
        pn_connection_t *c = pn_event_connection(e);
        conn_links_gone(r, cn, NULL);
        if (pn_connection_state(c) & PN_LOCAL_ACTIVE) pn_connection_close(c);
        break;
    }
    default:
        break;
    }
}

static void conn_free(fa_relay *r, conn *cn)
{
    r->nconns--;
    conn_links_gone(r, cn, NULL);
    if (cn->prev) cn->prev->next = cn->next; else r->conns = cn->next;
    if (cn->next) cn->next->prev = cn->prev;
    pn_connection_driver_destroy(&cn->driver);
    close(cn->fd);
    free(cn);
    DROPN(r, FA_RC_CONNECTIONS, 1);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Room in the poll() arrays for one more connection (and the wake-up and listener
 * entries); false when out of memory. */
static bool room_for_conn(fa_relay *r)
{
    size_t need = r->nconns + 3;
    if (need <= r->fdcap) return true;
    size_t cap = need * 2;
    struct pollfd *fds = realloc(r->fds, cap * sizeof *fds);
    if (!fds) return false;
    r->fds = fds;
    conn **owners = realloc(r->owners, cap * sizeof *owners);
    if (!owners) return false;
    r->owners = owners;
    r->fdcap = cap;
    return true;
}

static void on_accept(fa_relay *r)
{
    for (;;) {
        /* Out of memory, the connection waits in the backlog as when out of
         * descriptors below. */
        if (!room_for_conn(r)) { r->accept_after = now_ms() + 100; return; }
        int fd = accept4(r->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            /* Out of descriptors (or memory): the pending connection stays in the
             * backlog and the listener stays readable, so polling it again at once
             * would spin a core. Leave it for 100 ms; a freed descriptor lets it in. */
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                r->accept_after = now_ms() + 100;
            return;                              /* EAGAIN: nothing more to accept */
        }
        fa_tcp_nodelay(fd);
        conn *cn = calloc(1, sizeof *cn);
        pn_connection_t *c = pn_connection();
        pn_transport_t *t = pn_transport();
        if (!cn || !c || !t) {
            /* Out of memory: cut at once; the client sees a refused connection. */
            free(cn);
            if (c) pn_connection_free(c);
            if (t) pn_transport_free(t);
            close(fd);
            continue;
        }
        pn_transport_set_server(t);
        pn_sasl_t *sasl = pn_sasl(t);
        pn_sasl_set_allow_insecure_mechs(sasl, true);
        pn_sasl_allowed_mechs(sasl, "ANONYMOUS");
        cn->fd = fd;
        if (pn_connection_driver_init(&cn->driver, c, t) != 0) {
            free(cn);
            close(fd);
            continue;
        }
        cn->next = r->conns;
        if (r->conns) r->conns->prev = cn;
        r->conns = cn;
        r->nconns++;
        BUMP(r, FA_RC_CONNECTIONS);
        BUMP(r, FA_RC_CONNECTIONS_TOTAL);
    }
}

static void destroy_node_cb(void *arg, void *value)
{
    fa_relay *r = arg;
    node *n = value;
    for (int k = 0; k < n->nsubs; k++) node_destroy(r, n->subs[k]);
    node_destroy(r, n);
}

/* Drain every driver until quiet: routing crosses connections. */
static void process(fa_relay *r)
{
    for (int round = 0; round < 1000; round++) {
        bool busy = false;
        for (conn *cn = r->conns; cn; cn = cn->next) {
            pn_event_t *e;
            while ((e = pn_connection_driver_next_event(&cn->driver))) {
                busy = true;
                dispatch(r, cn, e);
            }
        }
        if (topup_dirty(r)) busy = true;
        if (!busy) break;
    }
}

static void *relay_main(void *arg)
{
    fa_relay *r = arg;
    while (!__atomic_load_n(&r->stopping, __ATOMIC_ACQUIRE)) {
        process(r);
        int64_t now = now_ms();
        int timeout = 1000;
        bool freed = false;
        for (conn *cn = r->conns, *next; cn; cn = next) {
            next = cn->next;
            while (fa_driver_write(&cn->driver, cn->fd) > 0) {}
            if (pn_connection_driver_finished(&cn->driver)) {
                conn_free(r, cn);
                freed = true;
                continue;
            }
            int64_t deadline = pn_transport_tick(cn->driver.transport, now);
            if (deadline) {
                int64_t wait = deadline - now;
                if (wait < timeout) timeout = wait < 0 ? 0 : (int)wait;
            }
        }
        /* A connection's end reroutes (releases, requeues) onto others: handle what
         * that raised before sleeping. */
        if (freed || r->dirty) continue;
        struct pollfd *fds = r->fds;   /* room for every connection: on_accept */
        conn **owners = r->owners;
        size_t nfds = 0;
        fds[nfds] = (struct pollfd){r->stop_wake.rfd, POLLIN, 0}; owners[nfds++] = NULL;
        bool accepting = r->accept_after <= now;
        if (!accepting && r->accept_after - now < timeout)
            timeout = (int)(r->accept_after - now);
        fds[nfds] = (struct pollfd){accepting ? r->lfd : -1, POLLIN, 0};
        owners[nfds++] = NULL;
        for (conn *cn = r->conns; cn; cn = cn->next) {
            fds[nfds] = (struct pollfd){cn->fd, fa_driver_events(&cn->driver), 0};
            owners[nfds++] = cn;
        }
        if (poll(fds, nfds, timeout) < 0 && errno != EINTR) break;   /* fa_relay_alive() */
        if (fds[0].revents) fa_waker_clear(&r->stop_wake);
        if (fds[1].revents & POLLIN) {
            on_accept(r);
            /* It may have grown (moved) the arrays; their entries came along. */
            fds = r->fds;
            owners = r->owners;
        }
        for (size_t i = 2; i < nfds; i++) {
            conn *cn = owners[i];
            short re = fds[i].revents;
            if (!re) continue;
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                /* A few reads per wake-up, then the others get their turn. */
                bool full = true;
                for (int k = 0; k < 4 && full && fa_driver_read(&cn->driver, cn->fd, &full) > 0; k++) {}
            }
            if (re & POLLOUT) while (fa_driver_write(&cn->driver, cn->fd) > 0) {}
            if ((re & (POLLHUP | POLLERR)) && !(re & POLLIN)) {
                pn_connection_driver_close(&cn->driver);
            }
        }
    }
    /* Shut down: cut every connection (as a crash would) and forget all state. */
    while (r->conns) conn_free(r, r->conns);
    fa_map_drain(&r->nodes, destroy_node_cb, r);
    r->dirty = NULL;
    __atomic_store_n(&r->exited, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* ---------------------------------------------------------------- public API ---- */

fa_relay *fa_relay_new(const fa_relay_config *cfg)
{
    if (cfg->window < 1 || cfg->nroutes < 0) return NULL;
    fa_relay *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->lfd = -1;
    r->stop_wake.rfd = r->stop_wake.wfd = -1;
    r->mode = cfg->mode;
    r->port = cfg->port;
    r->window = cfg->window;
    r->default_dist = cfg->default_dist;
    r->host = strdup(cfg->host ? cfg->host : "127.0.0.1");
    r->container_id = strdup(cfg->container_id ? cfg->container_id : "fastamqp-relay");
    r->product = strdup(cfg->product ? cfg->product : "");
    r->version = strdup(cfg->version ? cfg->version : "0");
    r->router_id = strdup(cfg->router_id ? cfg->router_id : "fastamqp");
    bool oom = !r->host || !r->container_id || !r->product || !r->version || !r->router_id;
    oom |= fa_map_init(&r->nodes) != 0;
    r->routes = calloc(cfg->nroutes ? (size_t)cfg->nroutes : 1, sizeof *r->routes);
    oom |= !r->routes;
    for (int i = 0; !oom && i < cfg->nroutes; i++) {
        r->routes[i].dist = cfg->route_dists[i];
        oom |= !(r->routes[i].prefix = strdup(cfg->route_prefixes[i]));
        r->nroutes = i + 1;
    }
    if (oom) {
        fa_relay_free(r);
        return NULL;
    }
    return r;
}

int fa_relay_start(fa_relay *r, char *err, size_t errlen)
{
    if (r->started) { snprintf(err, errlen, "already started"); return -1; }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", r->port);
    int rc = getaddrinfo(r->host, portstr, &hints, &res);
    if (rc != 0) { snprintf(err, errlen, "%s: %s", r->host, gai_strerror(rc)); return -1; }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { snprintf(err, errlen, "socket: %s", strerror(errno)); freeaddrinfo(res); return -1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
        snprintf(err, errlen, "bind %s:%d: %s", r->host, r->port, strerror(errno));
        freeaddrinfo(res); close(fd); return -1;
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss; socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    int bound = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (!room_for_conn(r)) { snprintf(err, errlen, "out of memory"); close(fd); return -1; }
    if (fa_waker_init(&r->stop_wake, false) != 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        close(fd);
        return -1;
    }
    r->lfd = fd; r->port = bound;
    r->stopping = 0;
    r->exited = 0;
    r->accept_after = 0;
    rc = pthread_create(&r->thread, NULL, relay_main, r);
    if (rc != 0) {
        snprintf(err, errlen, "pthread_create: %s", strerror(rc));
        close(fd); r->lfd = -1;
        fa_waker_close(&r->stop_wake);
        return -1;
    }
    r->started = true;
    return bound;
}

void fa_relay_counters(fa_relay *r, uint64_t out[FA_RC_COUNT])
{
    for (int i = 0; i < FA_RC_COUNT; i++) out[i] = __atomic_load_n(&r->ctr[i], __ATOMIC_RELAXED);
}

int fa_relay_alive(fa_relay *r)
{
    return r->started && !__atomic_load_n(&r->exited, __ATOMIC_ACQUIRE);
}

void fa_relay_stop(fa_relay *r)
{
    if (!r->started) return;
    __atomic_store_n(&r->stopping, 1, __ATOMIC_RELEASE);
    fa_waker_wake(&r->stop_wake);
    pthread_join(r->thread, NULL);
    r->started = false;
    close(r->lfd);
    r->lfd = -1;
    fa_waker_close(&r->stop_wake);
    /* Gauges die with the connections; the cumulative counts stay. */
    __atomic_store_n(&r->ctr[FA_RC_CONNECTIONS], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&r->ctr[FA_RC_LINKS], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&r->ctr[FA_RC_STORED], 0, __ATOMIC_RELAXED);
}

void fa_relay_free(fa_relay *r)
{
    if (!r) return;
    fa_relay_stop(r);
    free(r->host); free(r->container_id); free(r->product); free(r->version);
    free(r->router_id);
    for (int i = 0; i < r->nroutes; i++) free(r->routes[i].prefix);
    free(r->routes);
    fa_map_free(&r->nodes);
    free(r->fds);
    free(r->owners);
    free(r);
}

int fa_relay_distribution(fa_relay *r, const char *address)
{
    /* The table is read-only once made: safe beside the running relay thread. */
    return table_lookup(r, normalize(address));
}
