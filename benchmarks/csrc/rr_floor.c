/* rr_floor: the request/response floor of an AMQP 1.0 intermediary, in raw Proton C.
 *
 * What an RPC call costs with no driver at all: one request at a time from a client
 * to an echo server through the intermediary, and the echo back. benchmarks/e2e.py
 * shows it next to its call rows (docs/benchmarks.md, "The floor"). Built at run time
 * by benchmarks/rr_floor.py (cc + pkg-config libqpid-proton); never committed built.
 *
 *   rr_floor server HOST PORT ADDRESS           echo server through an intermediary
 *   rr_floor server --listen HOST PORT ADDRESS  echo server the client connects to
 *                                               directly (no intermediary)
 *   rr_floor client HOST PORT ADDRESS COUNT [SIZE [WARMUP [REPLY_ADDRESS]]]
 *
 * The exchange is oslo's call: the request is sent unsettled (as rpc-call) with
 * reply-to and message-id set; the server accepts it and answers on a sender link to
 * the reply-to address with the same body, correlation-id = the request's id,
 * pre-settled (as rpc-reply). The client's reply address is a dynamic source (the
 * intermediary names it) unless REPLY_ADDRESS is given (peers without dynamic
 * sources). A round trip runs from the request's send to its reply's arrival; the
 * request's disposition is not waited for (it is counted when it comes).
 *
 * The server prints "ready" once its receiver is attached. The client prints one JSON
 * object: count, p50_us, p99_us, mean_us, rate (round trips per second over the
 * measured ones), reply_before_disposition (round trips whose reply came before the
 * request's outcome), and exits 0; on an error it prints the condition and exits 1.
 */
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/message.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int exit_code = 0;

static bool failed(pn_event_t *e, pn_condition_t *cond)
{
    if (!pn_condition_is_set(cond)) return false;
    fprintf(stderr, "rr_floor: %s: %s: %s\n", pn_event_type_name(pn_event_type(e)),
            pn_condition_get_name(cond), pn_condition_get_description(cond));
    exit_code = 1;
    return true;
}

/* A whole delivery into buf (grown as needed); returns its size. */
static size_t read_delivery(pn_link_t *l, pn_delivery_t *d, char **buf, size_t *cap)
{
    size_t need = pn_delivery_pending(d);
    if (need > *cap) {
        *cap = need * 2;
        *buf = realloc(*buf, *cap);
        if (!*buf) abort();
    }
    ssize_t n = pn_link_recv(l, *buf, need);
    return n > 0 ? (size_t)n : 0;
}

/* One message on l, tagged with id; settled at once (pre-settled) if asked. */
static void send_message(pn_message_t *m, pn_link_t *l, uint64_t id,
                         pn_rwbytes_t *scratch, bool settled)
{
    char tag[sizeof id];
    memcpy(tag, &id, sizeof tag);
    pn_delivery_t *d = pn_delivery(l, pn_dtag(tag, sizeof tag));
    if (pn_message_send(m, l, scratch) < 0) {
        fprintf(stderr, "rr_floor: send: %s\n", pn_error_text(pn_message_error(m)));
        exit(1);
    }
    if (settled) pn_delivery_settle(d);
}

/* ------------------------------------------------------------------ server ---- */

typedef struct reply_route {
    char *address;
    pn_link_t *link;
    struct reply_route *next;
} reply_route;

typedef struct server {
    const char *address;
    bool direct;            /* clients connect to us: we are the peer of their links */
    int next_reply;         /* direct: names of the dynamic reply sources we assign */
    reply_route *routes;
    pn_message_t *in, *out;
    char *buf; size_t cap;
    pn_rwbytes_t scratch;
    uint64_t tags;
} server;

static reply_route *route_for(server *s, pn_session_t *ssn, const char *address)
{
    for (reply_route *r = s->routes; r; r = r->next)
        if (!strcmp(r->address, address)) return r;
    if (s->direct) return NULL;      /* replies go on the client's own receiver link */
    /* Through an intermediary: a sender link per reply address, as the oslo driver
     * does (the embedded router has no anonymous relay). */
    reply_route *r = calloc(1, sizeof *r);
    r->address = strdup(address);
    r->link = pn_sender(ssn, address);
    pn_terminus_set_address(pn_link_target(r->link), address);
    pn_link_set_snd_settle_mode(r->link, PN_SND_SETTLED);
    pn_link_open(r->link);
    r->next = s->routes;
    s->routes = r;
    return r;
}

static void server_on_request(server *s, pn_link_t *l, pn_delivery_t *d)
{
    if (pn_delivery_partial(d)) return;
    size_t n = read_delivery(l, d, &s->buf, &s->cap);
    pn_link_advance(l);
    pn_message_clear(s->in);
    if (pn_message_decode(s->in, s->buf, n) != 0) {
        pn_delivery_update(d, PN_REJECTED);
        pn_delivery_settle(d);
        return;
    }
    pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
    pn_link_flow(l, 1);
    const char *reply_to = pn_message_get_reply_to(s->in);
    if (!reply_to) return;
    reply_route *r = route_for(s, pn_link_session(l), reply_to);
    if (!r) {
        fprintf(stderr, "rr_floor: no link for reply-to %s\n", reply_to);
        return;
    }
    pn_message_clear(s->out);
    pn_message_set_address(s->out, reply_to);
    pn_message_set_correlation_id(s->out, pn_message_get_id(s->in));
    pn_data_copy(pn_message_body(s->out), pn_message_body(s->in));
    /* Sent pre-settled, as rpc-reply. Without credit yet (a new reply link) Proton
     * holds it until the intermediary gives some. */
    send_message(s->out, r->link, ++s->tags, &s->scratch, true);
}

static bool server_handle(server *s, pn_event_t *e)
{
    switch (pn_event_type(e)) {
    case PN_CONNECTION_INIT:
        if (!s->direct) {
            pn_connection_t *c = pn_event_connection(e);
            pn_connection_set_container(c, "rr_floor-server");
            pn_connection_open(c);
            pn_session_t *ssn = pn_session(c);
            pn_session_open(ssn);
            pn_link_t *l = pn_receiver(ssn, "requests");
            pn_terminus_set_address(pn_link_source(l), s->address);
            pn_link_open(l);
            pn_link_flow(l, 100);
        }
        break;
    case PN_CONNECTION_REMOTE_OPEN:
        if (s->direct) {
            pn_connection_t *c = pn_event_connection(e);
            pn_connection_set_container(c, "rr_floor-server");
            pn_connection_open(c);
        }
        break;
    case PN_SESSION_REMOTE_OPEN:
        if (s->direct) pn_session_open(pn_event_session(e));
        break;
    case PN_LINK_REMOTE_OPEN: {
        pn_link_t *l = pn_event_link(e);
        if (!s->direct) {
            if (pn_link_is_receiver(l)) { printf("ready\n"); fflush(stdout); }
            break;
        }
        if (pn_link_is_receiver(l)) {          /* the client's request sender */
            pn_terminus_copy(pn_link_target(l), pn_link_remote_target(l));
            pn_link_open(l);
            pn_link_flow(l, 100);
        } else {                               /* the client's reply receiver */
            char name[64];
            snprintf(name, sizeof name, "rr_floor/reply/%d", ++s->next_reply);
            pn_terminus_copy(pn_link_source(l), pn_link_remote_source(l));
            if (pn_terminus_is_dynamic(pn_link_remote_source(l)) ||
                !pn_terminus_get_address(pn_link_remote_source(l)))
                pn_terminus_set_address(pn_link_source(l), name);
            pn_link_set_snd_settle_mode(l, PN_SND_SETTLED);
            pn_link_open(l);
            reply_route *r = calloc(1, sizeof *r);
            r->address = strdup(pn_terminus_get_address(pn_link_source(l)));
            r->link = l;
            r->next = s->routes;
            s->routes = r;
        }
        break;
    }
    case PN_DELIVERY: {
        pn_delivery_t *d = pn_event_delivery(e);
        pn_link_t *l = pn_delivery_link(d);
        if (pn_link_is_receiver(l)) server_on_request(s, l, d);
        break;
    }
    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH: {
        pn_link_t *l = pn_event_link(e);
        failed(e, pn_link_remote_condition(l));
        for (reply_route **pp = &s->routes; *pp; pp = &(*pp)->next) {
            if ((*pp)->link == l) {
                reply_route *r = *pp;
                *pp = r->next;
                free(r->address);
                free(r);
                break;
            }
        }
        pn_link_close(l);
        break;
    }
    case PN_CONNECTION_REMOTE_CLOSE:
        pn_connection_close(pn_event_connection(e));
        if (s->direct) {
            /* The client left: forget its reply links, serve the next one. */
            while (s->routes) {
                reply_route *r = s->routes;
                s->routes = r->next;
                free(r->address);
                free(r);
            }
        } else if (failed(e, pn_connection_remote_condition(pn_event_connection(e)))) {
            return false;
        }
        break;
    case PN_TRANSPORT_CLOSED:
        if (!s->direct) {
            failed(e, pn_transport_condition(pn_event_transport(e)));
            return false;
        }
        break;
    case PN_LISTENER_ACCEPT:
        pn_listener_accept2(pn_event_listener(e), NULL, NULL);
        break;
    case PN_LISTENER_OPEN:
        printf("ready\n");
        fflush(stdout);
        break;
    case PN_LISTENER_CLOSE:
        failed(e, pn_listener_condition(pn_event_listener(e)));
        return false;
    default:
        break;
    }
    return true;
}

/* ------------------------------------------------------------------ client ---- */

typedef struct client {
    const char *address, *fixed_reply;
    int count, warmup, size;
    pn_link_t *sender, *receiver;
    const char *reply_address;
    pn_message_t *req, *rep;
    char *body;
    char *buf; size_t cap;
    pn_rwbytes_t scratch;
    uint64_t next_id, waiting_id;
    bool in_flight;         /* a request waits for its reply */
    double t_sent, t_first;
    double *samples; int nsamples;
    uint64_t disposed;      /* 1 + the id of the latest request whose outcome came */
    int reply_first;        /* replies that came before their request's outcome */
    bool done;
} client;

static void client_send(client *c)
{
    if (c->in_flight || c->done || !c->reply_address) return;
    if (pn_link_credit(c->sender) <= 0) return;
    pn_message_clear(c->req);
    pn_message_set_address(c->req, c->address);
    pn_message_set_reply_to(c->req, c->reply_address);
    c->waiting_id = c->next_id++;
    pn_message_set_id(c->req, (pn_atom_t){.type = PN_ULONG, .u.as_ulong = c->waiting_id});
    pn_data_t *body = pn_message_body(c->req);
    pn_data_put_binary(body, pn_bytes((size_t)c->size, c->body));
    c->in_flight = true;
    c->t_sent = now_us();
    send_message(c->req, c->sender, c->waiting_id, &c->scratch, false);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void client_on_reply(client *c, pn_link_t *l, pn_delivery_t *d)
{
    if (pn_delivery_partial(d)) return;
    double t = now_us();
    size_t n = read_delivery(l, d, &c->buf, &c->cap);
    pn_link_advance(l);
    if (!pn_delivery_settled(d)) pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
    pn_link_flow(l, 1);
    pn_message_clear(c->rep);
    if (pn_message_decode(c->rep, c->buf, n) != 0) {
        fprintf(stderr, "rr_floor: undecodable reply\n");
        exit_code = 1;
        return;
    }
    pn_atom_t cid = pn_message_get_correlation_id(c->rep);
    if (cid.type != PN_ULONG || cid.u.as_ulong != c->waiting_id || !c->in_flight) {
        fprintf(stderr, "rr_floor: unexpected reply\n");
        exit_code = 1;
        return;
    }
    c->in_flight = false;
    uint64_t k = c->waiting_id;
    if (k >= (uint64_t)c->warmup) {
        if (c->disposed <= k) c->reply_first++;
        if (c->nsamples == 0) c->t_first = c->t_sent;
        c->samples[c->nsamples++] = t - c->t_sent;
    }
    if (c->nsamples >= c->count) {
        c->done = true;
        pn_connection_close(pn_session_connection(pn_link_session(l)));
        return;
    }
    client_send(c);
}

static bool client_handle(client *c, pn_event_t *e)
{
    switch (pn_event_type(e)) {
    case PN_CONNECTION_INIT: {
        pn_connection_t *conn = pn_event_connection(e);
        pn_connection_set_container(conn, "rr_floor-client");
        pn_connection_open(conn);
        pn_session_t *ssn = pn_session(conn);
        pn_session_open(ssn);
        c->receiver = pn_receiver(ssn, "replies");
        if (c->fixed_reply) {
            pn_terminus_set_address(pn_link_source(c->receiver), c->fixed_reply);
        } else {
            pn_terminus_set_dynamic(pn_link_source(c->receiver), true);
        }
        pn_link_open(c->receiver);
        pn_link_flow(c->receiver, 10);
        c->sender = pn_sender(ssn, "requests");
        pn_terminus_set_address(pn_link_target(c->sender), c->address);
        pn_link_open(c->sender);
        break;
    }
    case PN_LINK_REMOTE_OPEN: {
        pn_link_t *l = pn_event_link(e);
        if (l == c->receiver) {
            const char *a = pn_terminus_get_address(pn_link_remote_source(l));
            if (!a) {
                fprintf(stderr, "rr_floor: the peer gave no reply address\n");
                exit_code = 1;
                pn_connection_close(pn_event_connection(e));
                break;
            }
            c->reply_address = strdup(a);
            client_send(c);
        }
        break;
    }
    case PN_LINK_FLOW:
        if (pn_event_link(e) == c->sender) client_send(c);
        break;
    case PN_DELIVERY: {
        pn_delivery_t *d = pn_event_delivery(e);
        pn_link_t *l = pn_delivery_link(d);
        if (l == c->receiver) {
            client_on_reply(c, l, d);
        } else if (pn_delivery_remote_state(d) || pn_delivery_settled(d)) {
            if (pn_delivery_remote_state(d) != PN_ACCEPTED) {
                fprintf(stderr, "rr_floor: request not accepted (state %llu)\n",
                        (unsigned long long)pn_delivery_remote_state(d));
                exit_code = 1;
            }
            pn_delivery_tag_t tag = pn_delivery_tag(d);
            uint64_t id = 0;
            if (tag.size == sizeof id) memcpy(&id, tag.start, sizeof id);
            if (id + 1 > c->disposed) c->disposed = id + 1;
            pn_delivery_settle(d);
        }
        break;
    }
    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH:
        if (failed(e, pn_link_remote_condition(pn_event_link(e))))
            pn_connection_close(pn_event_connection(e));
        break;
    case PN_CONNECTION_REMOTE_CLOSE:
        failed(e, pn_connection_remote_condition(pn_event_connection(e)));
        pn_connection_close(pn_event_connection(e));
        break;
    case PN_TRANSPORT_CLOSED:
        if (!c->done) failed(e, pn_transport_condition(pn_event_transport(e)));
        return false;
    default:
        break;
    }
    return true;
}

static void client_report(client *c)
{
    if (c->nsamples == 0) return;
    double total = 0;
    for (int i = 0; i < c->nsamples; i++) total += c->samples[i];
    double span = c->t_first > 0 ? (c->t_sent + c->samples[c->nsamples - 1]) - c->t_first : 0;
    qsort(c->samples, (size_t)c->nsamples, sizeof *c->samples, cmp_double);
    int n = c->nsamples;
    printf("{\"count\": %d, \"size\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, "
           "\"mean_us\": %.1f, \"rate\": %.1f, \"reply_before_disposition\": %d}\n",
           n, c->size, c->samples[n / 2], c->samples[(int)((n - 1) * 0.99)], total / n,
           span > 0 ? n / (span / 1e6) : 0.0, c->reply_first);
}

/* ------------------------------------------------------------------ main ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: rr_floor server [--listen] HOST PORT ADDRESS\n"
            "       rr_floor client HOST PORT ADDRESS COUNT [SIZE [WARMUP [REPLY_ADDRESS]]]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2) usage();
    bool is_server = !strcmp(argv[1], "server");
    if (!is_server && strcmp(argv[1], "client")) usage();
    int i = 2;
    bool listen = false;
    if (is_server && i < argc && !strcmp(argv[i], "--listen")) { listen = true; i++; }
    if (argc - i < (is_server ? 3 : 4)) usage();
    const char *host = argv[i], *port = argv[i + 1], *address = argv[i + 2];
    char addr[PN_MAX_ADDR];
    pn_proactor_addr(addr, sizeof addr, host, port);
    pn_proactor_t *proactor = pn_proactor();
    server s = {0};
    client c = {0};
    if (is_server) {
        s.address = address;
        s.direct = listen;
        s.in = pn_message();
        s.out = pn_message();
        if (listen) pn_proactor_listen(proactor, pn_listener(), addr, 16);
        else pn_proactor_connect2(proactor, NULL, NULL, addr);
    } else {
        c.address = address;
        c.count = atoi(argv[i + 3]);
        c.size = argc > i + 4 ? atoi(argv[i + 4]) : 1024;
        c.warmup = argc > i + 5 ? atoi(argv[i + 5]) : 20;
        c.fixed_reply = argc > i + 6 ? argv[i + 6] : NULL;
        if (c.count <= 0 || c.size < 0 || c.warmup < 0) usage();
        c.samples = calloc((size_t)c.count, sizeof *c.samples);
        c.body = malloc((size_t)c.size + 1);
        memset(c.body, 'x', (size_t)c.size);
        c.req = pn_message();
        c.rep = pn_message();
        pn_proactor_connect2(proactor, NULL, NULL, addr);
    }
    bool running = true;
    while (running) {
        pn_event_batch_t *batch = pn_proactor_wait(proactor);
        pn_event_t *e;
        while (running && (e = pn_event_batch_next(batch))) {
            running = is_server ? server_handle(&s, e) : client_handle(&c, e);
        }
        pn_proactor_done(proactor, batch);
    }
    if (!is_server) {
        if (c.nsamples < c.count && exit_code == 0) {
            fprintf(stderr, "rr_floor: the connection ended after %d round trips\n",
                    c.nsamples);
            exit_code = 1;
        }
        client_report(&c);
    }
    pn_proactor_free(proactor);
    return exit_code;
}
