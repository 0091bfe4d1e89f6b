/* The C connection engine; see fa_io.h for the threading and ownership rules.
 *
 * This is the C I/O layer under the connection front (fastamqp/engine/front.py; the
 * interface is fastamqp/engine/iolayer.py). Behaviour mirrors the pure-Python I/O layer
 * (fastamqp/engine/pure/io.py) test for test (tests/engine/test_io_contract.py, and
 * test_connection.py, test_confirmed.py, test_faults.py run on both engines):
 * failover round robin, an attempt at once after a loss, then the back-off; pre-settled
 * sends complete once queued on a link with credit for them (cview) or once their
 * bytes have left through the socket; confirmed sends once taken into the window
 * (fa_io.h); in-doubt sends are resent after a failover while their retry budget
 * allows; subscriptions and the reply link are attached again on every connection;
 * links detached by the peer come back after link_retry_delay; replies are
 * correlated here, on the I/O thread. The policies both engines share are constants
 * in fa_io.h and fastamqp/engine/policy.py.
 */
#define _GNU_SOURCE
#include "fa_io.h"
#include "fa_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/connection_driver.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/sasl.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#define CONNECT_TIMEOUT 10.0
#define TEMPORARY_QUEUE "temporary-queue"
#define CLOSE_GRACE 2.0

/* ---- small helpers ------------------------------------------------------------ */

/* Live objects of each kind, for the leak tests (fa_live). */
static long live[FA_LIVE_KINDS];
#define LIVE_ADD(kind, n) __atomic_add_fetch(&live[kind], (n), __ATOMIC_RELAXED)

long fa_live(int kind)
{
    return kind >= 0 && kind < FA_LIVE_KINDS ? __atomic_load_n(&live[kind], __ATOMIC_RELAXED) : -1;
}

double fa_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void abs_timespec(double deadline, struct timespec *ts)
{
    /* Condition variables are set to CLOCK_MONOTONIC: time.monotonic() deadlines
     * from Python apply as they are. */
    if (deadline > 1e12) deadline = 1e12;
    ts->tv_sec = (time_t)deadline;
    ts->tv_nsec = (long)((deadline - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
    if (ts->tv_nsec < 0) ts->tv_nsec = 0;
}

static void init_cond(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* Wait on cond (io->lock held) until *seq moves past seen or deadline passes. */
static uint64_t wait_seq(pthread_mutex_t *lock, pthread_cond_t *cond,
                         const uint64_t *seq, uint64_t seen, double deadline)
{
    struct timespec ts;
    abs_timespec(deadline, &ts);
    while (*seq == seen) {
        if (pthread_cond_timedwait(cond, lock, &ts) == ETIMEDOUT) break;
    }
    return *seq;
}

/* The same, taking and releasing the lock: what every fa_*_wait does. */
static uint64_t wait_unlocked(pthread_mutex_t *lock, pthread_cond_t *cond,
                              const uint64_t *seq, uint64_t seen, double deadline)
{
    pthread_mutex_lock(lock);
    uint64_t now = wait_seq(lock, cond, seq, seen, deadline);
    pthread_mutex_unlock(lock);
    return now;
}

/* ---- the shared objects --------------------------------------------------------- */

struct sender;

typedef struct oplist { fa_op *head, *tail; size_t count; } oplist;

struct fa_op {
    int refs;
    uint64_t id;
    char *address, *payload;
    size_t size;
    int presettled;
    double deadline;
    int retries_left;                 /* -1: no limit */
    int in_doubt_resend;              /* 0: fail, not resend, when in doubt (calls) */
    int confirm, fanout;              /* FA_SEND_CONFIRM, FA_SEND_FANOUT */
    /* set by the caller before it is queued, then read by the I/O thread */
    int queued;                       /* counted in its address's cview.queued */
    int early;                        /* its caller was released before the outcome:
                                       * pre-settled with credit (cview), or a
                                       * confirmed send taken into the window */
    int held;                         /* counted in io->held (a confirmed send) */
    /* shared, under io->lock */
    fa_result res;
    uint64_t seq;
    pthread_cond_t cond;
    /* I/O thread only */
    fa_op *prev, *next;
    oplist *list;
    size_t heap_idx;                  /* SIZE_MAX: not in the deadline heap */
    uint64_t mark;                    /* pre-settled: output offset of its last byte */
    double retry_at;
    double expiry;                    /* deadline-heap key: the deadline, or earlier
                                       * to check a fanout link for credit */
    int attempts;                     /* resends after released / modified */
    int in_wwait;                     /* in flight, its caller waiting for room */
    fa_op *wprev, *wnext;
    pn_delivery_t *delivery;          /* unsettled and in flight */
    fa_op *cmd_next;                  /* in the submitted queue */
};

struct fa_call {
    int refs;
    uint64_t id;
    char *key;
    uint64_t generation;              /* the connection it was registered on */
    /* shared, under io->lock */
    int state, error;
    uint64_t beats, seq;
    char text[256];
    char *reply;
    size_t reply_size;
    pthread_cond_t cond;
};

struct fa_rec {
    fa_rec *next;
    pn_delivery_t *delivery;
    uint64_t generation;
    struct rlink *rlink;
    char *address;
    size_t size;
    char *payload;
    int outcome;                      /* set when queued for settlement */
};

struct fa_sub {
    int refs;
    uint64_t id;
    int credit;
    /* shared, under io->lock */
    char **addresses;
    int naddresses;
    fa_rec *head, *tail;
    int stopped, closed;
    uint64_t seq;
    pthread_cond_t cond;
    /* I/O thread only */
    struct fa_sub *io_next;
};

typedef struct rlink {               /* a receiver link of this connection */
    struct rlink *next;               /* io->rlinks: freed with the connection */
    fa_sub *sub;                      /* NULL: the reply link */
    char *address;                    /* the source address */
    char *spec;                       /* the subscription entry, for re-attaching */
    pn_link_t *link;
    int closed;
    int credit;
} rlink;

/* What callers may know of a sender link's credit, under io->lock. A pre-settled
 * send completes as soon as it is queued when the link has credit for it and for
 * every send queued before it: the link is attached and the peer wants the message,
 * so it is as good as written (and it is still resent after a connection loss, as a
 * written one is). This spares the caller a round trip to the I/O thread per cast or
 * reply. Without credit the send waits as before (REFERENCE §3.9 #7). */
typedef struct cview {
    int credit;                       /* link credit less the sends waiting for it */
    int queued;                       /* sends queued by callers, not yet taken */
    int flowing;                      /* the link has had credit: a consumer exists */
} cview;

typedef struct sender {
    char *address;
    cview *cv;
    pn_link_t *link;
    int active, credit_seen;
    double last_used, active_since;
    oplist waiting, inflight;
} sender;

enum { CMD_SUBSCRIBE = 1, CMD_UNSUBSCRIBE, CMD_ACTIVATE };
typedef struct cmd {
    int kind;
    void *ptr;
    uint64_t generation;
    char *text;
    struct cmd *next;
} cmd;

enum { T_RECONNECT = 1, T_CONNECT_TIMEOUT, T_CLOSE_GRACE, T_REATTACH };
typedef struct timer {
    double when;
    int kind;
    uint64_t generation;
    fa_sub *sub;
    char *address;
} timer;

struct fa_io {
    /* configuration (copied) */
    char *container_id, *vhost, **properties;
    int nproperties;
    double idle_timeout, retry_interval, retry_backoff, retry_max, link_retry_delay;
    double sender_timeout, next_purge;
    int reply_credit, trace, tls, green;
    char *sasl_dir, *sasl_name, *ca_file, *cert_file, *key_file, *key_password;
    fa_host *hosts;
    int nhosts;

    pthread_mutex_t lock;
    /* shared, under lock */
    cmd *cmd_head, *cmd_tail;
    fa_op *sub_head, *sub_tail;       /* submitted sends */
    fa_rec *settle_head, *settle_tail;
    fa_waker cmd_wake;                /* wakes the I/O thread: commands, sends */
    fa_event *ev_head, *ev_tail;
    fa_waker ev_wake;                 /* a pipe: the dispatcher select()s on it */
    fa_event *stopped_ev;             /* FA_EV_STOPPED, made up front: the last
                                       * event must not depend on memory */
    int close_req, abort_req;         /* fa_io_close / fa_io_abort, not commands: a
                                       * close needs no memory */
    double close_drain;
    uint64_t activate_failed;         /* generation fa_io_activate could not queue */
    uint64_t status_seq;
    pthread_cond_t status_cond;
    int active, ended;
    char *reply_address;
    fa_map calls;
    fa_map cviews;                    /* address -> cview, kept for the io's life */
    uint64_t ids;
    int window;                       /* confirmed sends held at most */
    long held;                        /* confirmed sends taken, not yet settled */
    fa_stats st;                      /* counters (held, window: see fa_io_stats) */

    pthread_t thread;
    int started;

    /* I/O thread only */
    uint64_t generation;
    int next_host, cur_host;
    double delay;
    int sock, connecting, have_driver, opened, activated, closing, quit;
    pn_connection_driver_t driver;
    pn_session_t *session;
    uint64_t written_total;
    fa_map senders;
    rlink *rlinks, *reply_link;
    oplist justsent, written, resubmit, retry;
    fa_op **heap;
    size_t heap_len, heap_cap;
    fa_op *wwait_head, *wwait_tail;   /* confirmed sends waiting for room, in order */
    long lost_inflight;               /* in doubt at the last loss, resent on activation */
    double opened_at, lost_at, drain, drain_until;
    int draining;
    fa_sub *subs;
    timer *timers;
    size_t ntimers, timers_cap;
    pn_message_t *scratch;
    char lost_reason[300];
    int sasl_failed;
    uint64_t tag, link_counter;
};

/* ---- events and waking ---------------------------------------------------------- */

static void post_locked(fa_io *io, fa_event *ev)
{
    ev->next = NULL;
    if (io->ev_tail) io->ev_tail->next = ev; else io->ev_head = ev;
    io->ev_tail = ev;
    fa_waker_wake(&io->ev_wake);
}

/* NULL when out of memory: callers drop what they meant to tell, or the connection
 * when the dispatcher must hear it (on_remote_open). */
static fa_event *new_event(int kind, uint64_t generation)
{
    fa_event *ev = calloc(1, sizeof *ev);
    if (!ev) return NULL;
    LIVE_ADD(FA_LIVE_EVENT, 1);
    ev->kind = kind;
    ev->generation = generation;
    ev->sasl_outcome = -1;
    return ev;
}

/* An event whose text the dispatcher needs; NULL when out of memory. */
static fa_event *new_text_event(int kind, uint64_t generation, const char *text)
{
    fa_event *ev = new_event(kind, generation);
    if (ev && !(ev->text = strdup(text))) {
        fa_event_free(ev);
        return NULL;
    }
    return ev;
}

static void post(fa_io *io, fa_event *ev)
{
    if (!ev) return;
    pthread_mutex_lock(&io->lock);
    post_locked(io, ev);
    pthread_mutex_unlock(&io->lock);
}

/* Something a Python waiter may wait for changed (lock held). */
static void changed_locked(fa_io *io, pthread_cond_t *cond, uint64_t *seq, uint64_t id)
{
    (*seq)++;
    pthread_cond_broadcast(cond);
    if (io->green) {
        /* Out of memory: the green waiter wakes at its deadline instead. */
        fa_event *ev = new_event(FA_EV_WAKE, 0);
        if (ev) {
            ev->wake_id = id;
            post_locked(io, ev);
        }
    }
}

static void status_changed_locked(fa_io *io)
{
    changed_locked(io, &io->status_cond, &io->status_seq, 0);
}

void fa_event_free(fa_event *ev)
{
    while (ev) {
        fa_event *next = ev->next;
        int i;
        free(ev->text);
        free(ev->cond_name);
        free(ev->cond_desc);
        free(ev->mech);
        free(ev->tls_subject);
        free(ev->tls_protocol);
        free(ev->tls_cipher);
        for (i = 0; i < 2 * ev->nprops; i++) free(ev->props[i]);
        free(ev->props);
        free(ev);
        LIVE_ADD(FA_LIVE_EVENT, -1);
        ev = next;
    }
}

fa_event *fa_io_take_events(fa_io *io)
{
    pthread_mutex_lock(&io->lock);
    fa_event *ev = io->ev_head;
    io->ev_head = io->ev_tail = NULL;
    /* The dispatcher reads the pipe itself (a green select() under eventlet). */
    fa_waker_rearm(&io->ev_wake);
    pthread_mutex_unlock(&io->lock);
    return ev;
}

int fa_io_event_fd(fa_io *io) { return io->ev_wake.rfd; }

static void wake_io_locked(fa_io *io)
{
    fa_waker_wake(&io->cmd_wake);
}

/* 0, or -1 when out of memory (nothing queued). */
static int push_cmd(fa_io *io, int kind, void *ptr, uint64_t generation, const char *text)
{
    cmd *c = calloc(1, sizeof *c);
    if (!c) return -1;
    c->kind = kind;
    c->ptr = ptr;
    c->generation = generation;
    c->text = fa_strdup(text);
    if (text && !c->text) { free(c); return -1; }
    pthread_mutex_lock(&io->lock);
    if (io->cmd_tail) io->cmd_tail->next = c; else io->cmd_head = c;
    io->cmd_tail = c;
    wake_io_locked(io);
    pthread_mutex_unlock(&io->lock);
    return 0;
}

uint64_t fa_io_next_id(fa_io *io)
{
    return __atomic_add_fetch(&io->ids, 1, __ATOMIC_RELAXED);
}

/* ---- oplist and the deadline heap (I/O thread) ---------------------------------- */

static void list_push(oplist *l, fa_op *op)
{
    op->list = l;
    op->next = NULL;
    op->prev = l->tail;
    if (l->tail) l->tail->next = op; else l->head = op;
    l->tail = op;
    l->count++;
}

static void list_remove(fa_op *op)
{
    oplist *l = op->list;
    if (!l) return;
    if (op->prev) op->prev->next = op->next; else l->head = op->next;
    if (op->next) op->next->prev = op->prev; else l->tail = op->prev;
    op->prev = op->next = NULL;
    op->list = NULL;
    l->count--;
}

static fa_op *list_pop(oplist *l)
{
    fa_op *op = l->head;
    if (op) list_remove(op);
    return op;
}

static void heap_swap(fa_io *io, size_t a, size_t b)
{
    fa_op *t = io->heap[a];
    io->heap[a] = io->heap[b];
    io->heap[b] = t;
    io->heap[a]->heap_idx = a;
    io->heap[b]->heap_idx = b;
}

static void heap_up(fa_io *io, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (io->heap[p]->expiry <= io->heap[i]->expiry) break;
        heap_swap(io, i, p);
        i = p;
    }
}

static void heap_down(fa_io *io, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < io->heap_len && io->heap[l]->expiry < io->heap[m]->expiry) m = l;
        if (r < io->heap_len && io->heap[r]->expiry < io->heap[m]->expiry) m = r;
        if (m == i) break;
        heap_swap(io, i, m);
        i = m;
    }
}

/* 0, or -1 when out of memory. Never fails right after a heap_remove: the heap's
 * room only grows. */
static int heap_add(fa_io *io, fa_op *op)
{
    if (op->heap_idx != SIZE_MAX) return 0;
    if (io->heap_len == io->heap_cap) {
        size_t cap = io->heap_cap ? io->heap_cap * 2 : 256;
        fa_op **heap = realloc(io->heap, cap * sizeof(fa_op *));
        if (!heap) return -1;
        io->heap = heap;
        io->heap_cap = cap;
    }
    op->heap_idx = io->heap_len;
    io->heap[io->heap_len++] = op;
    heap_up(io, op->heap_idx);
    return 0;
}

static void heap_remove(fa_io *io, fa_op *op)
{
    size_t i = op->heap_idx;
    if (i == SIZE_MAX) return;
    op->heap_idx = SIZE_MAX;
    io->heap_len--;
    if (i != io->heap_len) {
        io->heap[i] = io->heap[io->heap_len];
        io->heap[i]->heap_idx = i;
        heap_down(io, i);
        heap_up(io, i);
    }
}

/* ---- ops ------------------------------------------------------------------------ */

fa_op *fa_op_new(fa_io *io, const char *address, const char *payload, size_t size,
                 int presettled, double deadline, int retry, int in_doubt_resend,
                 int flags)
{
    fa_op *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->address = strdup(address);
    op->payload = malloc(size ? size : 1);
    if (!op->address || !op->payload) {
        free(op->address);
        free(op->payload);
        free(op);
        return NULL;                   /* the wrapper raises MemoryError */
    }
    LIVE_ADD(FA_LIVE_OP, 1);
    op->refs = 1;
    op->id = fa_io_next_id(io);
    memcpy(op->payload, payload, size);
    op->size = size;
    op->presettled = presettled;
    op->deadline = deadline;
    op->retries_left = retry < 0 ? -1 : retry;
    op->in_doubt_resend = in_doubt_resend;
    op->confirm = !presettled && (flags & FA_SEND_CONFIRM);
    op->fanout = (flags & FA_SEND_FANOUT) != 0;
    op->expiry = deadline;
    op->heap_idx = SIZE_MAX;
    init_cond(&op->cond);
    return op;
}

void fa_op_unref(fa_op *op)
{
    if (__atomic_sub_fetch(&op->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    pthread_cond_destroy(&op->cond);
    free(op->address);
    free(op->payload);
    free(op);
    LIVE_ADD(FA_LIVE_OP, -1);
}

uint64_t fa_op_id(fa_op *op) { return op->id; }

void fa_io_send(fa_io *io, fa_op *op)
{
    __atomic_add_fetch(&op->refs, 1, __ATOMIC_RELAXED);   /* the I/O thread's */
    pthread_mutex_lock(&io->lock);
    cview *cv = fa_map_get(&io->cviews, op->address);
    if (cv) {
        op->queued = 1;
        int room = cv->credit - cv->queued > 0;
        /* A confirmed send is also taken while the link is only short of credit
         * for the moment (it has had some: a consumer exists, merely busy): it
         * waits in the window, not its caller. A link that never had credit keeps
         * the rule of any send (no consumer: no credit by the deadline is an error). */
        if (op->confirm && cv->flowing && io->held < io->window) room = 1;
        if (room && op->confirm && io->held < io->window) {
            op->held = 1;              /* taken: the I/O thread owns it from here */
            io->held++;
        }
        if (room && (op->presettled || op->held)) {
            op->early = 1;
            op->res.state = FA_DONE;
            op->res.outcome = FA_ACCEPTED;
            changed_locked(io, &op->cond, &op->seq, op->id);
        }
        cv->queued++;
    }
    op->cmd_next = NULL;
    if (io->sub_tail) io->sub_tail->cmd_next = op; else io->sub_head = op;
    io->sub_tail = op;
    wake_io_locked(io);
    pthread_mutex_unlock(&io->lock);
}

uint64_t fa_op_result(fa_io *io, fa_op *op, fa_result *out)
{
    pthread_mutex_lock(&io->lock);
    *out = op->res;
    uint64_t seq = op->seq;
    pthread_mutex_unlock(&io->lock);
    return seq;
}

uint64_t fa_op_wait(fa_io *io, fa_op *op, uint64_t seen, double deadline)
{
    return wait_unlocked(&io->lock, &op->cond, &op->seq, seen, deadline);
}

static int op_finish(fa_io *io, fa_op *op, int state, int outcome, int error,
                     const char *text)
{
    int done = 0;
    pthread_mutex_lock(&io->lock);
    if (op->res.state == FA_PENDING) {
        op->res.state = state;
        op->res.outcome = outcome;
        op->res.error = error;
        if (text) snprintf(op->res.text, sizeof op->res.text, "%s", text);
        changed_locked(io, &op->cond, &op->seq, op->id);
        done = 1;
    }
    pthread_mutex_unlock(&io->lock);
    return done;
}

/* The caller gave up (its I/O thread looked stuck): never send it late. */
void fa_op_abandon(fa_io *io, fa_op *op, int error, const char *text)
{
    op_finish(io, op, FA_FAILED, 0, error, text);
}

static int op_is_done(fa_io *io, fa_op *op)
{
    pthread_mutex_lock(&io->lock);
    int done = op->res.state != FA_PENDING;
    pthread_mutex_unlock(&io->lock);
    return done;
}

/* Whether the I/O thread should drop op: its caller gave up on it. An early one is
 * done but must still go out. */
static int op_abandoned(fa_io *io, fa_op *op)
{
    return !op->early && op_is_done(io, op);
}

/* A line for Python's log, written by the dispatcher thread. */
static void log_event(fa_io *io, int level, const char *fmt, ...)
{
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    fa_event *ev = new_text_event(FA_EV_LOG, io->generation, text);
    if (!ev) return;                   /* out of memory: the line is lost */
    ev->level = level;
    post(io, ev);
}

/* ---- the window of confirmed sends (I/O thread; counts under io->lock) ---------- */

static void wwait_remove(fa_io *io, fa_op *op)
{
    if (!op->in_wwait) return;
    if (op->wprev) op->wprev->wnext = op->wnext; else io->wwait_head = op->wnext;
    if (op->wnext) op->wnext->wprev = op->wprev; else io->wwait_tail = op->wprev;
    op->wprev = op->wnext = NULL;
    op->in_wwait = 0;
    pthread_mutex_lock(&io->lock);
    io->st.waiting_for_room--;
    pthread_mutex_unlock(&io->lock);
}

/* Take op into the window if there is room (lock held): its caller is released and
 * the I/O thread owns the message until the peer settles it. */
static int take_locked(fa_io *io, fa_op *op)
{
    if (op->res.state != FA_PENDING || io->held >= io->window) return 0;
    io->held++;
    op->held = op->early = 1;
    op->res.state = FA_DONE;
    op->res.outcome = FA_ACCEPTED;
    changed_locked(io, &op->cond, &op->seq, op->id);
    return 1;
}

/* A confirmed send has just gone on the wire: taken, or its caller waits for room. */
static void take_or_wait(fa_io *io, fa_op *op)
{
    pthread_mutex_lock(&io->lock);
    int taken = take_locked(io, op);
    int pending = op->res.state == FA_PENDING;
    if (!taken && pending) io->st.waiting_for_room++;
    pthread_mutex_unlock(&io->lock);
    if (taken || !pending) return;
    op->in_wwait = 1;
    op->wnext = NULL;
    op->wprev = io->wwait_tail;
    if (io->wwait_tail) io->wwait_tail->wnext = op; else io->wwait_head = op;
    io->wwait_tail = op;
}

/* The I/O thread is finished with op (it is in none of its lists). A held send
 * leaves the window: the oldest send waiting for room takes its place. */
static void op_release(fa_io *io, fa_op *op)
{
    heap_remove(io, op);
    wwait_remove(io, op);
    if (op->held) {
        fa_op *next;
        op->held = 0;
        pthread_mutex_lock(&io->lock);
        io->held--;
        pthread_mutex_unlock(&io->lock);
        while ((next = io->wwait_head)) {
            pthread_mutex_lock(&io->lock);
            int full = io->held >= io->window;
            if (!full) take_locked(io, next);
            pthread_mutex_unlock(&io->lock);
            if (full) break;
            wwait_remove(io, next);    /* taken, or its caller gave up: either way */
        }
    }
    fa_op_unref(op);
}

/* op will not go out (again). Its caller hears why; a send whose caller was already
 * released (a confirmed send taken, or a pre-settled one completed early) is logged
 * and counted instead, since nobody else will hear of it. */
static void op_fail(fa_io *io, fa_op *op, int error, const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (op->early) {
        pthread_mutex_lock(&io->lock);
        io->st.given_up++;
        pthread_mutex_unlock(&io->lock);
        log_event(io, FA_LOG_ERROR, "gave up on a message to %s (send #%llu): %s",
                  op->address, (unsigned long long)op->id, text);
    } else {
        op_finish(io, op, FA_FAILED, 0, error, text);
    }
    list_remove(op);
    op_release(io, op);
}

/* The pause before a released message goes again (fa_io.h). */
static double released_pause(fa_io *io, int attempt)
{
    double cap = FA_RELEASED_PAUSE_MAX;
    double pause = FA_RELEASED_PAUSE_FIRST;
    if (io->link_retry_delay > FA_RELEASED_PAUSE_FIRST && io->link_retry_delay < cap)
        cap = io->link_retry_delay;
    while (attempt-- > 0 && pause < cap) pause *= 2;
    return pause < cap ? pause : cap;
}

static int op_may_retry(fa_op *op)
{
    if (op->retries_left < 0) return 1;
    if (op->retries_left > 0) { op->retries_left--; return 1; }
    return 0;
}

/* ---- calls ---------------------------------------------------------------------- */

fa_call *fa_call_new(fa_io *io, const char *message_id)
{
    fa_call *call = calloc(1, sizeof *call);
    if (!call) return NULL;
    call->key = strdup(message_id);
    if (!call->key) { free(call); return NULL; }
    call->refs = 2;                   /* the Python wrapper and the map */
    call->id = fa_io_next_id(io);
    init_cond(&call->cond);
    LIVE_ADD(FA_LIVE_CALL, 1);
    void *old = NULL;
    pthread_mutex_lock(&io->lock);
    call->generation = io->generation;
    int rc = fa_map_put(&io->calls, message_id, call, &old);
    pthread_mutex_unlock(&io->lock);
    if (rc != 0) {
        call->refs = 1;                /* never registered: only the caller's */
        fa_call_unref(call);
        return NULL;
    }
    if (old) fa_call_unref(old);
    return call;
}

void fa_call_unref(fa_call *call)
{
    if (__atomic_sub_fetch(&call->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    pthread_cond_destroy(&call->cond);
    free(call->key);
    free(call->reply);
    free(call);
    LIVE_ADD(FA_LIVE_CALL, -1);
}

uint64_t fa_call_id(fa_call *call) { return call->id; }

uint64_t fa_call_state(fa_io *io, fa_call *call, int *state, uint64_t *beats,
                       int *error, char *text, size_t textlen)
{
    pthread_mutex_lock(&io->lock);
    *state = call->state;
    *beats = call->beats;
    *error = call->error;
    if (text && textlen) snprintf(text, textlen, "%s", call->text);
    uint64_t seq = call->seq;
    pthread_mutex_unlock(&io->lock);
    return seq;
}

uint64_t fa_call_wait(fa_io *io, fa_call *call, uint64_t seen, double deadline)
{
    return wait_unlocked(&io->lock, &call->cond, &call->seq, seen, deadline);
}

char *fa_call_take_reply(fa_io *io, fa_call *call, size_t *size)
{
    pthread_mutex_lock(&io->lock);
    char *reply = call->reply;
    *size = call->reply_size;
    call->reply = NULL;
    pthread_mutex_unlock(&io->lock);
    return reply;
}

void fa_call_cancel(fa_io *io, fa_call *call)
{
    fa_call *removed = NULL;
    pthread_mutex_lock(&io->lock);
    if (fa_map_get(&io->calls, call->key) == call) removed = fa_map_del(&io->calls, call->key);
    pthread_mutex_unlock(&io->lock);
    if (removed) fa_call_unref(removed);
}

/* lock held */
static void call_fail_locked(fa_io *io, fa_call *call, int error, const char *text)
{
    if (call->state != FA_PENDING) return;
    call->state = FA_FAILED;
    call->error = error;
    snprintf(call->text, sizeof call->text, "%s", text);
    changed_locked(io, &call->cond, &call->seq, call->id);
}

typedef struct { fa_io *io; int error; const char *text; } fail_args;

static void fail_call_cb(void *arg, void *value)
{
    fail_args *a = arg;
    call_fail_locked(a->io, value, a->error, a->text);
}

static void fail_calls(fa_io *io, int error, const char *text)
{
    /* Calls stay registered until their waiters cancel them. */
    fail_args a = { io, error, text };
    pthread_mutex_lock(&io->lock);
    fa_map_each(&io->calls, fail_call_cb, &a);
    pthread_mutex_unlock(&io->lock);
}

/* ---- subscriptions -------------------------------------------------------------- */

fa_sub *fa_sub_new(fa_io *io, int credit)
{
    fa_sub *sub = calloc(1, sizeof *sub);
    if (!sub) return NULL;             /* the wrapper raises MemoryError */
    LIVE_ADD(FA_LIVE_SUB, 1);
    sub->refs = 1;
    sub->id = fa_io_next_id(io);
    sub->credit = credit > 0 ? credit : 1;
    init_cond(&sub->cond);
    return sub;
}

uint64_t fa_sub_id(fa_sub *sub) { return sub->id; }

static void free_addresses(char **addresses, int n)
{
    int i;
    if (!addresses) return;
    for (i = 0; i < n; i++) free(addresses[i]);
    free(addresses);
}

/* A copy of n strings, or NULL when out of memory. */
static char **copy_addresses(const char *const *addresses, int n)
{
    char **copy = calloc(n ? n : 1, sizeof(char *));
    int i;
    if (!copy) return NULL;
    for (i = 0; i < n; i++) {
        if (!(copy[i] = strdup(addresses[i]))) {
            free_addresses(copy, i);
            return NULL;
        }
    }
    return copy;
}

int fa_sub_set_addresses(fa_io *io, fa_sub *sub, const char *const *addresses, int n)
{
    char **copy = copy_addresses(addresses, n);
    if (!copy) return -1;
    pthread_mutex_lock(&io->lock);
    char **old = sub->addresses;
    int oldn = sub->naddresses;
    sub->addresses = copy;
    sub->naddresses = n;
    pthread_mutex_unlock(&io->lock);
    free_addresses(old, oldn);
    return 0;
}

void fa_rec_free(fa_rec *rec)   /* one block with its strings */
{
    free(rec);
    LIVE_ADD(FA_LIVE_REC, -1);
}

void fa_sub_unref(fa_sub *sub)
{
    if (__atomic_sub_fetch(&sub->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    fa_rec *rec = sub->head;
    while (rec) { fa_rec *next = rec->next; fa_rec_free(rec); rec = next; }
    free_addresses(sub->addresses, sub->naddresses);
    pthread_cond_destroy(&sub->cond);
    free(sub);
    LIVE_ADD(FA_LIVE_SUB, -1);
}

int fa_io_subscribe(fa_io *io, fa_sub *sub)
{
    __atomic_add_fetch(&sub->refs, 1, __ATOMIC_RELAXED);
    if (push_cmd(io, CMD_SUBSCRIBE, sub, 0, NULL) == 0) return 0;
    fa_sub_unref(sub);
    return -1;
}

int fa_io_unsubscribe(fa_io *io, fa_sub *sub)
{
    fa_sub_stop(io, sub);
    pthread_mutex_lock(&io->lock);
    int first = !sub->closed;
    sub->closed = 1;
    pthread_mutex_unlock(&io->lock);
    if (!first) return 0;
    __atomic_add_fetch(&sub->refs, 1, __ATOMIC_RELAXED);
    if (push_cmd(io, CMD_UNSUBSCRIBE, sub, 0, NULL) == 0) return 0;
    /* Its links stay attached (stopped: nothing is handed out) until the connection
     * ends; the caller hears MemoryError and may try again. */
    pthread_mutex_lock(&io->lock);
    sub->closed = 0;
    pthread_mutex_unlock(&io->lock);
    fa_sub_unref(sub);
    return -1;
}

int fa_sub_take(fa_io *io, fa_sub *sub, fa_rec **out, int max, uint64_t *seq,
                int *stopped)
{
    int n = 0;
    pthread_mutex_lock(&io->lock);
    while (sub->head && n < max) {
        fa_rec *rec = sub->head;
        sub->head = rec->next;
        if (!sub->head) sub->tail = NULL;
        rec->next = NULL;
        out[n++] = rec;
    }
    *seq = sub->seq;
    *stopped = sub->stopped;
    pthread_mutex_unlock(&io->lock);
    return n;
}

uint64_t fa_sub_wait(fa_io *io, fa_sub *sub, uint64_t seen, double deadline)
{
    return wait_unlocked(&io->lock, &sub->cond, &sub->seq, seen, deadline);
}

void fa_sub_stop(fa_io *io, fa_sub *sub)
{
    pthread_mutex_lock(&io->lock);
    if (!sub->stopped) {
        sub->stopped = 1;
        changed_locked(io, &sub->cond, &sub->seq, sub->id);
    }
    pthread_mutex_unlock(&io->lock);
}

const char *fa_rec_payload(fa_rec *rec, size_t *size)
{
    *size = rec->size;
    return rec->payload;
}

const char *fa_rec_address(fa_rec *rec) { return rec->address; }

void fa_io_settle(fa_io *io, fa_rec *rec, int outcome)
{
    rec->outcome = outcome;
    rec->next = NULL;
    pthread_mutex_lock(&io->lock);
    if (io->settle_tail) io->settle_tail->next = rec; else io->settle_head = rec;
    io->settle_tail = rec;
    wake_io_locked(io);
    pthread_mutex_unlock(&io->lock);
}

/* ---- engine lifecycle (Python threads) ------------------------------------------ */

/* Whether a copy of an optional string failed. */
#define LOST(copy, orig) ((orig) && !(copy))

fa_io *fa_io_new(const fa_config *cfg, char *err, size_t errlen)
{
    int i, oom = 0;
    if (cfg->nhosts <= 0) {
        snprintf(err, errlen, "no host to connect to");
        return NULL;
    }
    fa_io *io = calloc(1, sizeof *io);
    if (!io) { snprintf(err, errlen, "out of memory"); return NULL; }
    LIVE_ADD(FA_LIVE_ENGINE, 1);
    /* What fa_io_free undoes comes first, so that any failure below can call it. */
    pthread_mutex_init(&io->lock, NULL);
    init_cond(&io->status_cond);
    io->cmd_wake.rfd = io->cmd_wake.wfd = io->ev_wake.rfd = io->ev_wake.wfd = -1;
    io->sock = -1;
    io->container_id = strdup(cfg->container_id ? cfg->container_id : "fastamqp");
    io->vhost = fa_strdup(cfg->vhost);
    oom |= !io->container_id || LOST(io->vhost, cfg->vhost);
    io->properties = calloc(2 * cfg->nproperties + 1, sizeof(char *));
    oom |= !io->properties;
    if (io->properties) {
        io->nproperties = cfg->nproperties;
        for (i = 0; i < 2 * cfg->nproperties; i++)
            oom |= !(io->properties[i] = strdup(cfg->properties[i]));
    }
    io->idle_timeout = cfg->idle_timeout;
    io->retry_interval = cfg->retry_interval;
    io->retry_backoff = cfg->retry_backoff;
    io->retry_max = cfg->retry_interval_max;
    io->link_retry_delay = cfg->link_retry_delay;
    io->sender_timeout = cfg->sender_link_timeout;
    io->reply_credit = cfg->reply_credit > 0 ? cfg->reply_credit : 1;
    io->trace = cfg->trace;
    io->tls = cfg->tls;
    io->green = cfg->green;
    io->sasl_dir = fa_strdup(cfg->sasl_config_dir);
    io->sasl_name = fa_strdup(cfg->sasl_config_name);
    io->ca_file = fa_strdup(cfg->ca_file);
    io->cert_file = fa_strdup(cfg->cert_file);
    io->key_file = fa_strdup(cfg->key_file);
    io->key_password = fa_strdup(cfg->key_password);
    oom |= LOST(io->sasl_dir, cfg->sasl_config_dir) ||
           LOST(io->sasl_name, cfg->sasl_config_name) || LOST(io->ca_file, cfg->ca_file) ||
           LOST(io->cert_file, cfg->cert_file) || LOST(io->key_file, cfg->key_file) ||
           LOST(io->key_password, cfg->key_password);
    io->hosts = calloc(cfg->nhosts, sizeof(fa_host));
    oom |= !io->hosts;
    if (io->hosts) {
        io->nhosts = cfg->nhosts;
        for (i = 0; i < cfg->nhosts; i++) {
            const fa_host *h = &cfg->hosts[i];
            fa_host *c = &io->hosts[i];
            c->hostname = strdup(h->hostname);
            c->port = h->port;
            c->user = fa_strdup(h->user);
            c->password = fa_strdup(h->password);
            c->mechs = fa_strdup(h->mechs);
            c->peer_name = fa_strdup(h->peer_name);
            oom |= !c->hostname || LOST(c->user, h->user) || LOST(c->password, h->password) ||
                   LOST(c->mechs, h->mechs) || LOST(c->peer_name, h->peer_name);
        }
    }
    oom |= fa_map_init(&io->calls) != 0;
    oom |= fa_map_init(&io->senders) != 0;
    oom |= fa_map_init(&io->cviews) != 0;
    /* Room for the connection's own timers up front (add_timer): reconnecting never
     * depends on memory. */
    io->timers_cap = 16;
    io->timers = calloc(io->timers_cap, sizeof(timer));
    oom |= !io->timers;
    io->stopped_ev = new_event(FA_EV_STOPPED, 0);
    oom |= !io->stopped_ev;
    io->scratch = pn_message();
    oom |= !io->scratch;
    if (oom) {
        snprintf(err, errlen, "out of memory");
        fa_io_free(io);
        return NULL;
    }
    io->delay = io->retry_interval;
    io->lost_at = -1e9;               /* never connected: back off from the start */
    io->window = cfg->window > 0 ? cfg->window : 1;
    if (fa_waker_init(&io->cmd_wake, false) != 0 || fa_waker_init(&io->ev_wake, true) != 0) {
        snprintf(err, errlen, "cannot create the engine's wake-up descriptors: %s",
                 strerror(errno));
        fa_io_free(io);
        return NULL;
    }
    return io;
}

static void *io_main(void *arg);

int fa_io_start(fa_io *io)
{
    int rc = pthread_create(&io->thread, NULL, io_main, io);
    if (rc == 0) io->started = 1;
    return rc;
}

void fa_io_activate(fa_io *io, uint64_t generation, const char *reply_address)
{
    if (push_cmd(io, CMD_ACTIVATE, NULL, generation, reply_address) == 0) return;
    /* The dispatcher cannot take an error here; a connection never activated would
     * sit unused, so the I/O thread drops it instead and the next one tries again. */
    pthread_mutex_lock(&io->lock);
    io->activate_failed = generation;
    wake_io_locked(io);
    pthread_mutex_unlock(&io->lock);
}

/* Taken after the sends queued before it (run_commands): a cast that completed early
 * (cview) and was followed by close() must still go out. */
void fa_io_close(fa_io *io, double drain)
{
    pthread_mutex_lock(&io->lock);
    io->close_req = 1;
    io->close_drain = drain;
    wake_io_locked(io);
    pthread_mutex_unlock(&io->lock);
}

void fa_io_stats(fa_io *io, fa_stats *out)
{
    pthread_mutex_lock(&io->lock);
    *out = io->st;
    out->held = io->held;
    out->window = io->window;
    pthread_mutex_unlock(&io->lock);
}

void fa_io_abort(fa_io *io)
{
    pthread_mutex_lock(&io->lock);
    io->close_req = io->abort_req = 1;  /* do not wait for the peer */
    io->close_drain = 0;
    wake_io_locked(io);
    pthread_mutex_unlock(&io->lock);
}

int fa_io_join(fa_io *io, double timeout)
{
    if (!io->started) return 0;
    pthread_mutex_lock(&io->lock);
    double deadline = fa_monotonic() + timeout;
    while (!io->ended && fa_monotonic() < deadline)
        wait_seq(&io->lock, &io->status_cond, &io->status_seq, io->status_seq, deadline);
    int ended = io->ended;
    pthread_mutex_unlock(&io->lock);
    if (!ended) return -1;
    pthread_join(io->thread, NULL);
    io->started = 0;
    return 0;
}

int fa_io_active(fa_io *io)
{
    pthread_mutex_lock(&io->lock);
    int active = io->active;
    pthread_mutex_unlock(&io->lock);
    return active;
}

uint64_t fa_io_status(fa_io *io, char **reply_address)
{
    pthread_mutex_lock(&io->lock);
    uint64_t seq = io->status_seq;
    /* Out of memory this reads as "no reply address yet": the caller asks again. */
    if (reply_address) *reply_address = fa_strdup(io->reply_address);
    pthread_mutex_unlock(&io->lock);
    return seq;
}

uint64_t fa_io_wait_status(fa_io *io, uint64_t seen, double deadline)
{
    return wait_unlocked(&io->lock, &io->status_cond, &io->status_seq, seen, deadline);
}

static void free_call_cb(void *arg, void *value) { (void)arg; fa_call_unref(value); }
static void free_value_cb(void *arg, void *value) { (void)arg; free(value); }

void fa_io_free(fa_io *io)
{
    int i;
    if (!io) return;
    fa_event_free(io->ev_head);
    fa_event_free(io->stopped_ev);
    fa_map_drain(&io->calls, free_call_cb, NULL);
    fa_map_free(&io->calls);
    fa_map_drain(&io->cviews, free_value_cb, NULL);
    fa_map_free(&io->cviews);
    fa_map_free(&io->senders);
    cmd *c = io->cmd_head;
    while (c) { cmd *n = c->next; free(c->text); free(c); c = n; }
    if (io->properties)
        for (i = 0; i < 2 * io->nproperties; i++) free(io->properties[i]);
    free(io->properties);
    for (i = 0; i < io->nhosts; i++) {
        free((char *)io->hosts[i].hostname);
        free((char *)io->hosts[i].user);
        free((char *)io->hosts[i].password);
        free((char *)io->hosts[i].mechs);
        free((char *)io->hosts[i].peer_name);
    }
    free(io->hosts);
    free(io->container_id); free(io->vhost); free(io->sasl_dir); free(io->sasl_name);
    free(io->ca_file); free(io->cert_file); free(io->key_file); free(io->key_password);
    free(io->reply_address);
    free(io->heap);
    free(io->timers);
    if (io->scratch) pn_message_free(io->scratch);
    fa_waker_close(&io->cmd_wake);
    fa_waker_close(&io->ev_wake);
    pthread_cond_destroy(&io->status_cond);
    pthread_mutex_destroy(&io->lock);
    free(io);
    LIVE_ADD(FA_LIVE_ENGINE, -1);
}

/* ---- timers (I/O thread) --------------------------------------------------------- */

/* The connection's own timers (T_RECONNECT, T_CONNECT_TIMEOUT, T_CLOSE_GRACE) are one
 * of each at most, and always find room: a T_REATTACH leaves that many slots free.
 * So only a T_REATTACH can fail (-1, out of memory). */
#define OWN_TIMERS 3

static int add_timer(fa_io *io, double delay, int kind, fa_sub *sub, const char *address)
{
    size_t need = io->ntimers + 1 + (kind == T_REATTACH ? OWN_TIMERS : 0);
    if (need > io->timers_cap) {
        size_t cap = io->timers_cap * 2 > need ? io->timers_cap * 2 : need;
        timer *grown = realloc(io->timers, cap * sizeof(timer));
        if (!grown) return -1;
        io->timers = grown;
        io->timers_cap = cap;
    }
    char *copy = fa_strdup(address);
    if (address && !copy) return -1;
    timer *t = &io->timers[io->ntimers++];
    t->when = fa_monotonic() + delay;
    t->kind = kind;
    t->generation = io->generation;
    t->sub = sub;
    t->address = copy;
    if (sub) __atomic_add_fetch(&sub->refs, 1, __ATOMIC_RELAXED);
    return 0;
}

static void drop_timers(fa_io *io, int kind)
{
    size_t i = 0;
    while (i < io->ntimers) {
        if (io->timers[i].kind == kind) {
            if (io->timers[i].sub) fa_sub_unref(io->timers[i].sub);
            free(io->timers[i].address);
            io->timers[i] = io->timers[--io->ntimers];
        } else {
            i++;
        }
    }
}

/* ---- the connection (I/O thread) -------------------------------------------------- */

static void connect_next(fa_io *io);
static void connection_lost(fa_io *io, const char *fmt, ...);
static void drop_for_memory(fa_io *io, const char *what);
static void submit(fa_io *io, fa_op *op);

static void schedule_reconnect(fa_io *io)
{
    if (io->closing) return;
    double delay = io->delay > 0.01 ? io->delay : 0.01;
    /* After the immediate attempt: every retry_interval while the outage is young
     * (FA_RECONNECT_STEADY: a restarting peer is found within retry_interval of its
     * return), then multiplied, as the original driver did (its help text said
     * "added"), up to retry_interval_max. */
    if (io->delay <= 0)
        io->delay = io->retry_interval;
    else if (fa_monotonic() - io->lost_at >= FA_RECONNECT_STEADY)
        io->delay = io->delay * io->retry_backoff;
    if (io->delay > io->retry_max) io->delay = io->retry_max;
    drop_timers(io, T_RECONNECT);
    add_timer(io, delay, T_RECONNECT, NULL, NULL);
}

static int setup_tls(fa_io *io, pn_transport_t *t, const fa_host *h)
{
    pn_ssl_domain_t *domain = pn_ssl_domain(PN_SSL_MODE_CLIENT);
    int rc = domain ? 0 : -1;
    if (!rc && io->ca_file) rc = pn_ssl_domain_set_trusted_ca_db(domain, io->ca_file);
    if (!rc)
        rc = pn_ssl_domain_set_peer_authentication(domain, PN_SSL_VERIFY_PEER_NAME, NULL);
    if (!rc && io->cert_file)
        rc = pn_ssl_domain_set_credentials(domain, io->cert_file,
                                           io->key_file ? io->key_file : io->cert_file,
                                           io->key_password);
    if (!rc) {
        pn_ssl_t *ssl = pn_ssl(t);
        rc = pn_ssl_init(ssl, domain, NULL);
        if (!rc) rc = pn_ssl_set_peer_hostname(ssl, h->peer_name ? h->peer_name
                                                                 : h->hostname);
    }
    if (domain) pn_ssl_domain_free(domain);   /* the transport keeps its reference */
    return rc;
}

/* An attempt that never got a socket: the dispatcher hears why (unless there is no
 * memory to tell it), and the next attempt follows the back-off. */
static void connect_failed(fa_io *io, int index, const char *text)
{
    fa_event *ev = new_text_event(FA_EV_LOST, io->generation, text);
    if (ev) {
        ev->host = index;
        post(io, ev);
    }
    schedule_reconnect(io);
}

static void connect_next(fa_io *io)
{
    if (io->closing) return;
    int index = io->next_host++ % io->nhosts;
    const fa_host *h = &io->hosts[index];
    char port[16];
    struct addrinfo hints, *res = NULL;
    int fd = -1, rc;

    pthread_mutex_lock(&io->lock);   /* fa_call_new reads it */
    io->generation++;
    pthread_mutex_unlock(&io->lock);
    io->cur_host = index;
    io->sasl_failed = 0;
    io->lost_reason[0] = 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof port, "%d", h->port);
    rc = getaddrinfo(h->hostname, port, &hints, &res);
    if (rc == 0) {
        fd = socket(res->ai_family, res->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    res->ai_protocol);
        if (fd >= 0) {
            fa_tcp_nodelay(fd);
            if (connect(fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) {
                int e = errno;
                close(fd);
                fd = -1;
                errno = e;
            }
        }
    }
    if (fd < 0) {
        char text[300];
        snprintf(text, sizeof text, "cannot connect to %s:%d: %s", h->hostname, h->port,
                 rc ? gai_strerror(rc) : strerror(errno));
        if (res) freeaddrinfo(res);
        connect_failed(io, index, text);
        return;
    }
    freeaddrinfo(res);

    pn_connection_t *c = pn_connection();
    pn_transport_t *t = pn_transport();
    if (!c || !t) {
        if (c) pn_connection_free(c);
        if (t) pn_transport_free(t);
        close(fd);
        connect_failed(io, index, "cannot connect: out of memory");
        return;
    }
    pn_connection_set_container(c, io->container_id);
    if (io->vhost) pn_connection_set_hostname(c, io->vhost);
    fa_put_properties(c, (const char *const *)io->properties, io->nproperties);
    if (h->user) {
        pn_connection_set_user(c, h->user);
        pn_connection_set_password(c, h->password ? h->password : "");
    }
    if (io->idle_timeout > 0)
        pn_transport_set_idle_timeout(t, (pn_millis_t)(io->idle_timeout * 1000));
    pn_sasl_t *sasl = pn_sasl(t);
    pn_sasl_set_allow_insecure_mechs(sasl, true);
    if (h->mechs) pn_sasl_allowed_mechs(sasl, h->mechs);
    if (io->sasl_dir) pn_sasl_config_path(sasl, io->sasl_dir);
    if (io->sasl_name) pn_sasl_config_name(sasl, io->sasl_name);
    if (io->tls && setup_tls(io, t, h) != 0) {
        fa_event *ev = new_text_event(FA_EV_CONFIG_FAILED, io->generation,
                                      "TLS configuration error");
        if (ev) ev->host = index;
        close(fd);
        pn_transport_free(t);
        pn_connection_free(c);
        post(io, ev);
        schedule_reconnect(io);
        return;
    }
    if (io->trace && !h->password) pn_transport_trace(t, PN_TRACE_FRM);
    if (pn_connection_driver_init(&io->driver, c, t) != 0) {
        close(fd);                     /* the driver freed c and t */
        connect_failed(io, index, "cannot connect: out of memory");
        return;
    }
    io->have_driver = 1;
    io->sock = fd;
    io->connecting = 1;
    io->opened = io->activated = 0;
    io->written_total = 0;
    pn_connection_open(c);
    io->session = pn_session(c);
    pn_session_open(io->session);
    drop_timers(io, T_CONNECT_TIMEOUT);
    add_timer(io, CONNECT_TIMEOUT, T_CONNECT_TIMEOUT, NULL, NULL);
}

static void free_sender(fa_io *io, sender *s)
{
    pthread_mutex_lock(&io->lock);
    s->cv->credit = 0;
    s->cv->flowing = 0;
    pthread_mutex_unlock(&io->lock);
    free(s->address);
    free(s);
}

static void free_sender_cb(void *arg, void *value)
{
    fa_io *io = arg;
    sender *s = value;
    fa_op *op;
    /* Sends whose outcome is unknown go again on the next connection, while their
     * budget and deadline allow (REFERENCE §3.9 #8), in the order they were sent:
     * those in flight first, then those that never left (no credit yet), which are
     * not in doubt and simply wait for credit again. */
    while ((op = list_pop(&s->inflight))) {
        op->delivery = NULL;
        wwait_remove(io, op);
        if (op_abandoned(io, op)) { op_release(io, op); continue; }
        if (op->in_doubt_resend && op_may_retry(op)) {
            list_push(&io->resubmit, op);
            io->lost_inflight++;
        } else {
            op_fail(io, op, FA_ERR_SEND_FAILURE,
                    "connection lost before the peer settled the message to %s, and "
                    "its retries are spent", op->address);
        }
    }
    while ((op = list_pop(&s->waiting))) {
        if (op_abandoned(io, op)) op_release(io, op);
        else list_push(&io->resubmit, op);
    }
    free_sender(io, s);
}

static void requeue_written(fa_io *io, oplist *l)
{
    fa_op *op;
    while ((op = list_pop(l))) {
        if (op_abandoned(io, op)) { op_release(io, op); continue; }
        if (op->in_doubt_resend && op_may_retry(op)) list_push(&io->resubmit, op);
        else op_fail(io, op, FA_ERR_SEND_FAILURE,
                     "connection lost while writing the message to %s", op->address);
    }
}

static void teardown(fa_io *io)
{
    rlink *r = io->rlinks;
    while (r) { rlink *n = r->next; free(r->address); free(r->spec); free(r); r = n; }
    io->rlinks = io->reply_link = NULL;
    if (io->have_driver) {
        pn_connection_driver_destroy(&io->driver);
        io->have_driver = 0;
    }
    io->session = NULL;
    /* Until the next Open, sends wait in the resubmit list: no link can be made
     * without a session (a send here used to reach pn_sender(NULL)). */
    io->opened = io->activated = 0;
    if (io->sock >= 0) { close(io->sock); io->sock = -1; }
    io->connecting = 0;
}

static void connection_lost(fa_io *io, const char *fmt, ...)
{
    char reason[300];
    va_list ap;
    if (!io->have_driver) return;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);

    pn_transport_t *t = io->driver.transport;
    pn_connection_t *c = io->driver.connection;
    pn_condition_t *cond = pn_connection_remote_condition(c);
    int remote_closed = (pn_connection_state(c) & PN_REMOTE_CLOSED) != 0;
    if (!(remote_closed && pn_condition_is_set(cond))) cond = pn_transport_condition(t);
    const char *cond_name = pn_condition_is_set(cond) ? pn_condition_get_name(cond) : NULL;
    const char *cond_desc = cond_name ? pn_condition_get_description(cond) : NULL;
    if (cond_name)
        snprintf(io->lost_reason, sizeof io->lost_reason, "%s: %s: %s", reason,
                 cond_name, cond_desc ? cond_desc : "");
    else
        snprintf(io->lost_reason, sizeof io->lost_reason, "%s", reason);
    /* Out of memory, the event is lost; the status change below still tells waiters. */
    fa_event *ev = new_text_event(FA_EV_LOST, io->generation, io->lost_reason);
    if (ev) {
        pn_sasl_t *sasl = pn_sasl(t);
        ev->host = io->cur_host;
        ev->remote_closed = remote_closed;
        ev->cond_name = fa_strdup(cond_name);
        ev->cond_desc = fa_strdup(cond_desc);
        ev->sasl_outcome = (int)pn_sasl_outcome(sasl);
        ev->mech = fa_strdup(pn_sasl_get_mech(sasl));
    }

    pthread_mutex_lock(&io->lock);
    io->active = 0;
    free(io->reply_address);
    io->reply_address = NULL;
    status_changed_locked(io);
    if (ev) post_locked(io, ev);
    pthread_mutex_unlock(&io->lock);

    /* Calls in flight lose their reply route with the reply link. */
    char text[340];
    snprintf(text, sizeof text, "connection lost: %s", io->lost_reason);
    fail_calls(io, FA_ERR_LOST, text);
    fa_map_drain(&io->senders, free_sender_cb, io);
    requeue_written(io, &io->justsent);
    requeue_written(io, &io->written);
    drop_timers(io, T_CONNECT_TIMEOUT);
    drop_timers(io, T_REATTACH);
    /* A connection that had been up a while is tried again at once: a peer that
     * restarts quickly is found on the first attempt, not a back-off later. One that
     * failed soon after it opened keeps the back-off (no reconnection storm). */
    if (io->opened && fa_monotonic() - io->opened_at >= io->retry_interval) {
        io->delay = 0;
        io->lost_at = fa_monotonic();
    }
    teardown(io);
    if (io->closing) { io->quit = 1; return; }
    schedule_reconnect(io);
}

/* Out of memory on the I/O thread for something the connection cannot do without (a
 * link, an event the dispatcher waits for, a message it cannot read): drop the
 * connection, as a loss. What was in doubt goes again on the next one, the peer
 * releases what it had delivered, and calls in flight fail with the reason. */
static void drop_for_memory(fa_io *io, const char *what)
{
    if (!io->have_driver) return;
    pn_connection_driver_close(&io->driver);
    connection_lost(io, "out of memory (%s)", what);
}

/* ---- links (I/O thread) ----------------------------------------------------------- */

static pn_link_t *new_link(fa_io *io, int is_sender, const char *address, int dynamic,
                           const char *label, const char *link_name)
{
    char name[512];
    if (link_name)
        snprintf(name, sizeof name, "%s", link_name);
    else
        snprintf(name, sizeof name, "fastamqp/%s/[%s]/%llu",
                 is_sender ? "sender" : "receiver", label,
                 (unsigned long long)++io->link_counter);
    pn_link_t *l = is_sender ? pn_sender(io->session, name) : pn_receiver(io->session, name);
    pn_terminus_t *src = pn_link_source(l), *tgt = pn_link_target(l);
    if (dynamic) {
        pn_terminus_set_dynamic(src, true);
        /* RabbitMQ 4.1+ makes a temporary queue only for a dynamic source with this
         * capability; qdrouterd and qpidd ignore capabilities they do not know. */
        pn_data_put_symbol(pn_terminus_capabilities(src),
                           pn_bytes(strlen(TEMPORARY_QUEUE), TEMPORARY_QUEUE));
        pn_terminus_set_address(tgt, label);
    } else {
        pn_terminus_set_address(src, address);
        pn_terminus_set_address(tgt, address);
    }
    return l;
}

/* Splits a subscription entry (fa_io.h) into its address, link name and source
 * capabilities; the two last are NULL for a plain address. Returns a malloc'd copy
 * that the three pointers point into, or NULL when out of memory. */
static char *split_entry(const char *entry, const char **address, const char **name,
                         const char **caps)
{
    char *copy = strdup(entry), *sep;
    if (!copy) return NULL;
    *address = copy;
    *name = *caps = NULL;
    if ((sep = strchr(copy, FA_SOURCE_SEP))) {
        *sep = '\0';
        *name = sep + 1;
        if ((sep = strchr(sep + 1, FA_SOURCE_SEP))) {
            *sep = '\0';
            *caps = sep + 1;
        }
    }
    return copy;
}

static void put_capabilities(pn_data_t *data, const char *caps)
{
    /* An array of symbols, as the spec's multiple="true" fields are sent. */
    pn_data_put_array(data, false, PN_SYMBOL);
    pn_data_enter(data);
    while (*caps) {
        size_t n = strcspn(caps, " ");
        if (n) pn_data_put_symbol(data, pn_bytes(n, caps));
        caps += n;
        while (*caps == ' ') caps++;
    }
    pn_data_exit(data);
}

/* NULL when out of memory (nothing attached). */
static rlink *attach_receiver(fa_io *io, fa_sub *sub, const char *entry, int credit,
                              int dynamic)
{
    const char *address = NULL, *name = NULL, *caps = NULL;
    char *parts = entry ? split_entry(entry, &address, &name, &caps) : NULL;
    rlink *r = calloc(1, sizeof *r);
    if (r) {
        r->address = strdup(address ? address : "rpc-response");
        r->spec = fa_strdup(entry);
    }
    if (!r || (entry && !parts) || !r->address || (entry && !r->spec)) {
        if (r) { free(r->address); free(r->spec); free(r); }
        free(parts);
        return NULL;
    }
    r->sub = sub;
    r->credit = credit;
    r->link = new_link(io, 0, address, dynamic, dynamic ? "rpc-response" : address, name);
    if (name) {
        pn_terminus_t *src = pn_link_source(r->link);
        if (caps && *caps) put_capabilities(pn_terminus_capabilities(src), caps);
        /* The group's queue must outlive its listeners: notifications that arrive
         * while no member is attached wait for the next one. */
        pn_terminus_set_expiry_policy(src, PN_EXPIRE_NEVER);
    }
    free(parts);
    if (!sub && !dynamic) {
        /* A named reply queue (RabbitMQ): ask for its messages settled. Replies are
         * sent pre-settled anyway and the queue is this connection's own, so an
         * acknowledgement would only cost the broker and us a disposition per call
         * (pure/io.py's _ReplyLink does the same). */
        pn_link_set_snd_settle_mode(r->link, PN_SND_SETTLED);
    }
    pn_link_set_context(r->link, r);
    pn_link_open(r->link);
    pn_link_flow(r->link, credit);
    r->next = io->rlinks;
    io->rlinks = r;
    return r;
}

/* -1 when out of memory: the caller drops the connection (the next one attaches the
 * subscription again). */
static int attach_sub(fa_io *io, fa_sub *sub)
{
    int i, rc = 0;
    pthread_mutex_lock(&io->lock);
    int n = sub->naddresses, closed = sub->closed;
    char **addresses = copy_addresses((const char *const *)sub->addresses, n);
    pthread_mutex_unlock(&io->lock);
    if (!addresses) return -1;
    for (i = 0; i < n && !closed && rc == 0; i++)
        if (!attach_receiver(io, sub, addresses[i], sub->credit, 0)) rc = -1;
    free_addresses(addresses, n);
    return rc;
}

/* Tell callers the link's credit (cview); ``taken``: op is the I/O thread's now, no
 * longer queued. */
static void publish_credit(fa_io *io, sender *s, fa_op *taken)
{
    int credit = s->active ? pn_link_credit(s->link) - (int)s->waiting.count : 0;
    pthread_mutex_lock(&io->lock);
    if (taken && taken->queued) { s->cv->queued--; taken->queued = 0; }
    s->cv->credit = credit > 0 ? credit : 0;
    s->cv->flowing = s->active && s->credit_seen;
    pthread_mutex_unlock(&io->lock);
}

/* A send the I/O thread takes while it has no sender for it. */
static void taken_without_sender(fa_io *io, fa_op *op)
{
    if (!op->queued) return;
    pthread_mutex_lock(&io->lock);
    cview *cv = fa_map_get(&io->cviews, op->address);
    if (cv) cv->queued--;
    op->queued = 0;
    pthread_mutex_unlock(&io->lock);
}

/* NULL when out of memory. */
static sender *get_sender(fa_io *io, const char *address)
{
    sender *s = fa_map_get(&io->senders, address);
    if (s) return s;
    s = calloc(1, sizeof *s);
    if (!s || !(s->address = strdup(address))) { free(s); return NULL; }
    pthread_mutex_lock(&io->lock);
    s->cv = fa_map_get(&io->cviews, address);
    if (!s->cv) {
        cview *cv = calloc(1, sizeof *cv);
        if (cv && fa_map_put(&io->cviews, address, cv, NULL) == 0) s->cv = cv;
        else free(cv);
    }
    pthread_mutex_unlock(&io->lock);
    if (!s->cv || fa_map_put(&io->senders, address, s, NULL) != 0) {
        free(s->address);             /* a cview stays for the io's life anyway */
        free(s);
        return NULL;
    }
    s->last_used = fa_monotonic();
    s->link = new_link(io, 1, address, 0, address, NULL);
    pn_link_set_context(s->link, s);
    pn_link_open(s->link);
    return s;
}

static void transmit(fa_io *io, sender *s, fa_op *op)
{
    uint64_t tag = ++io->tag;
    pn_delivery_t *d = pn_delivery(s->link, pn_dtag((const char *)&tag, sizeof tag));
    pn_link_send(s->link, op->payload, op->size);
    pn_link_advance(s->link);
    if (op->presettled) {
        /* Complete after the socket write that carries it: see flush_output. */
        pn_delivery_settle(d);
        list_push(&io->justsent, op);
    } else {
        op->delivery = d;
        pn_delivery_set_context(d, op);
        list_push(&s->inflight, op);
        if (op->confirm && !op->early) take_or_wait(io, op);
    }
}

/* A fanout nobody receives: the link has never had credit (fa_io.h). Its caller
 * hears success, as from the original driver and the rabbit driver. */
static void drop_fanout(fa_io *io, fa_op *op)
{
    pthread_mutex_lock(&io->lock);
    io->st.fanout_dropped++;
    pthread_mutex_unlock(&io->lock);
    log_event(io, FA_LOG_DEBUG, "fanout to %s dropped: it has no receiver (the peer "
              "gave the link no credit)", op->address);
    list_remove(op);
    op_finish(io, op, FA_DONE, FA_ACCEPTED, 0, NULL);
    op_release(io, op);
}

static void drain_waiting(fa_io *io, sender *s)
{
    fa_op *op;
    while (s->active && pn_link_credit(s->link) > 0 && (op = list_pop(&s->waiting))) {
        if (op_abandoned(io, op)) { op_release(io, op); continue; }
        transmit(io, s, op);
    }
    publish_credit(io, s, NULL);
}

static void submit(fa_io *io, fa_op *op)
{
    if (io->closing && !op->early) {
        taken_without_sender(io, op);
        op_fail(io, op, FA_ERR_CLOSED, "the connection is closing");
        return;
    }
    if (op_abandoned(io, op)) { taken_without_sender(io, op); op_release(io, op); return; }
    if (heap_add(io, op) != 0) {
        /* Without its deadline it could wait for ever: fail it now. */
        taken_without_sender(io, op);
        op_fail(io, op, FA_ERR_SEND_FAILURE, "out of memory");
        return;
    }
    if (!io->activated) {
        taken_without_sender(io, op);
        list_push(&io->resubmit, op);
        return;
    }
    sender *s = get_sender(io, op->address);
    if (!s) {
        taken_without_sender(io, op);
        op_fail(io, op, FA_ERR_SEND_FAILURE, "out of memory for a link to %s", op->address);
        return;
    }
    double now = fa_monotonic();
    s->last_used = now;
    if (s->active && pn_link_credit(s->link) > 0 && !s->waiting.head) {
        transmit(io, s, op);
    } else if (op->fanout && !s->credit_seen && s->active &&
               now - s->active_since >= FA_FANOUT_CREDIT_WAIT) {
        publish_credit(io, s, op);
        drop_fanout(io, op);
        return;
    } else {
        list_push(&s->waiting, op);
        if (op->fanout && !s->credit_seen) {
            /* Look again once the link has had time to get credit. */
            double check = (s->active ? s->active_since : now) + FA_FANOUT_CREDIT_WAIT;
            if (check < now + 0.01) check = now + 0.01;
            if (check < op->deadline) {
                heap_remove(io, op);
                op->expiry = check;
                heap_add(io, op);
            }
        }
    }
    publish_credit(io, s, op);
}

static void sender_lost(fa_io *io, sender *s, const char *why)
{
    fa_op *op;
    fa_map_del(&io->senders, s->address);
    pn_link_set_context(s->link, NULL);
    pn_link_close(s->link);
    while ((op = list_pop(&s->inflight)) || (op = list_pop(&s->waiting))) {
        if (op->delivery) { pn_delivery_set_context(op->delivery, NULL); op->delivery = NULL; }
        wwait_remove(io, op);
        if (op_abandoned(io, op)) { op_release(io, op); continue; }
        if (op_may_retry(op)) {
            op->retry_at = fa_monotonic() + io->link_retry_delay;
            list_push(&io->retry, op);
        } else {
            op_fail(io, op, FA_ERR_SEND_FAILURE, "the peer detached the link to %s: %s",
                    s->address, why);
        }
    }
    free_sender(io, s);
}

static void receiver_lost(fa_io *io, rlink *r)
{
    r->closed = 1;
    pn_link_close(r->link);
    if (!r->sub) {
        /* The reply address is gone with the link: start afresh, as the pure engine. */
        pn_connection_driver_close(&io->driver);
        connection_lost(io, "reply link detached by the peer");
        return;
    }
    pthread_mutex_lock(&io->lock);
    int closed = r->sub->closed;
    pthread_mutex_unlock(&io->lock);
    if (!closed && add_timer(io, io->link_retry_delay, T_REATTACH, r->sub, r->spec) != 0)
        drop_for_memory(io, "re-attaching a subscription");
}

static void describe_condition(pn_condition_t *cond, char *out, size_t len)
{
    if (cond && pn_condition_is_set(cond))
        snprintf(out, len, "%s: %s", pn_condition_get_name(cond),
                 pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
    else
        snprintf(out, len, "no condition");
}

/* ---- incoming messages ------------------------------------------------------------ */

static void refill(rlink *r)
{
    int credit = pn_link_credit(r->link);
    if (credit <= (r->credit + 1) / 2) pn_link_flow(r->link, r->credit - credit);
}

/* NULL when out of memory. */
static char *read_delivery(pn_link_t *l, pn_delivery_t *d, size_t *size, size_t head)
{
    /* head: bytes to reserve in front (the record). */
    size_t cap = pn_delivery_pending(d), len = 0;
    char *buf = malloc(head + cap + 1);
    if (!buf) return NULL;
    for (;;) {
        ssize_t n = pn_link_recv(l, buf + head + len, cap - len);
        if (n == PN_EOS || n < 0) break;
        len += (size_t)n;
        if (len == cap) {
            size_t more = pn_delivery_pending(d);
            if (!more) break;
            cap += more;
            char *grown = realloc(buf, head + cap + 1);
            if (!grown) { free(buf); return NULL; }
            buf = grown;
        }
    }
    *size = len;
    return buf;
}

static void on_reply(fa_io *io, rlink *r, pn_delivery_t *d)
{
    size_t size;
    char *payload = read_delivery(r->link, d, &size, 0);
    if (!payload) {
        /* Whose reply it is cannot be known: the connection goes, and with it the
         * reply link, which fails the calls in flight. */
        drop_for_memory(io, "reading a reply");
        return;
    }
    pn_link_advance(r->link);
    pn_message_t *m = io->scratch;
    pn_message_clear(m);
    /* A reply nobody here can claim -- a late one, one for another client, or one
     * whose correlation-id cannot be read -- is settled MODIFIED below, as the pure
     * engine does. */
    int outcome = PN_MODIFIED;
    if (pn_message_decode(m, payload, size) == 0) {
        pn_msgid_t cid = pn_message_get_correlation_id(m);
        char key[512];
        key[0] = 0;
        if ((cid.type == PN_STRING || cid.type == PN_SYMBOL) &&
            cid.u.as_bytes.size < sizeof key) {
            memcpy(key, cid.u.as_bytes.start, cid.u.as_bytes.size);
            key[cid.u.as_bytes.size] = 0;
        }
        pn_data_t *body = pn_message_body(m);
        pn_data_rewind(body);
        /* No body, a null value, or (RabbitMQ 3.x adds one to body-less messages)
         * an empty data section: a heartbeat. */
        int heartbeat = !pn_data_next(body) || pn_data_type(body) == PN_NULL ||
                        (pn_data_type(body) == PN_BINARY && pn_data_get_binary(body).size == 0);
        pthread_mutex_lock(&io->lock);
        fa_call *call = key[0] ? fa_map_get(&io->calls, key) : NULL;
        if (call && call->state == FA_PENDING) {
            if (heartbeat) {
                call->beats++;
            } else {
                call->reply = payload;
                call->reply_size = size;
                call->state = FA_DONE;
                payload = NULL;
            }
            changed_locked(io, &call->cond, &call->seq, call->id);
            outcome = PN_ACCEPTED;
        }
        pthread_mutex_unlock(&io->lock);
    }
    free(payload);
    if (outcome == PN_MODIFIED) {
        /* A late reply (its caller gave up) or one for another client: tell the peer
         * not to redeliver it here (REFERENCE §3.4). */
        pn_disposition_t *local = pn_delivery_local(d);
        pn_disposition_set_failed(local, true);
        pn_disposition_set_undeliverable(local, true);
    }
    pn_delivery_update(d, outcome);
    pn_delivery_settle(d);
    refill(r);
}

static void on_message(fa_io *io, rlink *r, pn_delivery_t *d)
{
    size_t alen = strlen(r->address), size;
    size_t head = sizeof(fa_rec) + alen + 1;
    char *block = read_delivery(r->link, d, &size, head);
    if (!block) {
        /* Unsettled, the peer has it back when the connection goes; pre-settled, it
         * is lost as one in transit would be. */
        drop_for_memory(io, "reading a message");
        return;
    }
    pn_link_advance(r->link);
    fa_rec *rec = (fa_rec *)block;
    LIVE_ADD(FA_LIVE_REC, 1);
    memset(rec, 0, sizeof *rec);
    rec->address = block + sizeof(fa_rec);
    memcpy(rec->address, r->address, alen + 1);
    rec->payload = block + head;
    rec->size = size;
    rec->delivery = d;
    rec->generation = io->generation;
    rec->rlink = r;
    fa_sub *sub = r->sub;
    pthread_mutex_lock(&io->lock);
    if (sub->tail) sub->tail->next = rec; else sub->head = rec;
    sub->tail = rec;
    changed_locked(io, &sub->cond, &sub->seq, sub->id);
    pthread_mutex_unlock(&io->lock);
}

static void settle_rec(fa_io *io, fa_rec *rec)
{
    if (rec->generation == io->generation && io->have_driver && !rec->rlink->closed) {
        pn_delivery_t *d = rec->delivery;
        switch (rec->outcome) {
        case FA_ACCEPTED: pn_delivery_update(d, PN_ACCEPTED); break;
        case FA_RELEASED: pn_delivery_update(d, PN_RELEASED); break;
        case FA_REJECTED: pn_delivery_update(d, PN_REJECTED); break;
        default:
            pn_disposition_set_failed(pn_delivery_local(d), true);
            pn_delivery_update(d, PN_MODIFIED);
        }
        pn_delivery_settle(d);
        /* Credit comes back only as messages are settled: unacknowledged messages
         * are the back-pressure (REFERENCE §3.6). */
        refill(rec->rlink);
    }
    /* else: its connection is gone; the peer has already released it */
    fa_rec_free(rec);
}

/* The peer settled a confirmed send whose caller has gone on (fa_io.h). */
static void confirmed_outcome(fa_io *io, fa_op *op, pn_delivery_t *d, int outcome)
{
    pn_disposition_t *remote = pn_delivery_remote(d);
    /* Released, or modified without undeliverable-here: it goes again. Modified
     * with delivery-failed means a consumer had it (qdrouterd says so when the
     * consumer's link went away before settling): the copy sent again may be a
     * duplicate, and is counted as one. */
    int retryable = outcome == FA_RELEASED ||
        (outcome == FA_MODIFIED && !pn_disposition_is_undeliverable(remote));
    int maybe_dup = outcome == FA_MODIFIED && pn_disposition_is_failed(remote);
    pn_delivery_set_context(d, NULL);
    op->delivery = NULL;
    list_remove(op);
    if (outcome == FA_ACCEPTED) {
        pthread_mutex_lock(&io->lock);
        io->st.settled++;
        pthread_mutex_unlock(&io->lock);
        op_release(io, op);
        return;
    }
    if (retryable) {
        double now = fa_monotonic(), pause = released_pause(io, op->attempts++);
        if (now + pause < op->deadline && op_may_retry(op)) {
            pthread_mutex_lock(&io->lock);
            io->st.resent_released++;
            io->st.possibly_duplicated += maybe_dup;
            pthread_mutex_unlock(&io->lock);
            op->retry_at = now + pause;
            list_push(&io->retry, op);
            return;
        }
        op_fail(io, op, FA_ERR_SEND_FAILURE, "the peer %s it until its deadline or its "
                "retries were spent", outcome == FA_RELEASED ? "released" : "modified");
        return;
    }
    pn_condition_t *cond = pn_disposition_condition(remote);
    pthread_mutex_lock(&io->lock);
    io->st.rejected++;
    pthread_mutex_unlock(&io->lock);
    log_event(io, FA_LOG_ERROR, "the peer %s a message to %s (send #%llu): %s: %s",
              outcome == FA_REJECTED ? "rejected" : "refused (modified, undeliverable)",
              op->address, (unsigned long long)op->id,
              cond && pn_condition_is_set(cond) ? pn_condition_get_name(cond) : "no condition",
              cond && pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
    op_release(io, op);
}

static void on_outcome(fa_io *io, pn_delivery_t *d)
{
    fa_op *op = pn_delivery_get_context(d);
    uint64_t state = pn_delivery_remote_state(d);
    int outcome;
    switch (state) {
    case PN_ACCEPTED: outcome = FA_ACCEPTED; break;
    case PN_RELEASED: outcome = FA_RELEASED; break;
    case PN_MODIFIED: outcome = FA_MODIFIED; break;
    case PN_REJECTED: outcome = FA_REJECTED; break;
    default: return;                  /* not terminal yet */
    }
    if (op && op->confirm && op->early) {
        confirmed_outcome(io, op, d, outcome);
    } else if (op) {
        pn_disposition_t *remote = pn_delivery_remote(d);
        pn_condition_t *cond = pn_disposition_condition(remote);
        wwait_remove(io, op);
        pthread_mutex_lock(&io->lock);
        if (op->res.state == FA_PENDING) {
            op->res.state = FA_DONE;
            op->res.outcome = outcome;
            if (outcome == FA_MODIFIED) {
                op->res.delivery_failed = pn_disposition_is_failed(remote);
                op->res.undeliverable_here = pn_disposition_is_undeliverable(remote);
            }
            if (outcome == FA_REJECTED && cond && pn_condition_is_set(cond))
                snprintf(op->res.text, sizeof op->res.text, "%s\n%s",
                         pn_condition_get_name(cond),
                         pn_condition_get_description(cond) ? pn_condition_get_description(cond) : "");
            changed_locked(io, &op->cond, &op->seq, op->id);
        }
        pthread_mutex_unlock(&io->lock);
        pn_delivery_set_context(d, NULL);
        op->delivery = NULL;
        list_remove(op);
        op_release(io, op);
    }
    pn_delivery_settle(d);
}

/* ---- Proton events -------------------------------------------------------------- */

static void on_remote_open(fa_io *io, pn_connection_t *c)
{
    if (pn_connection_state(c) & PN_REMOTE_CLOSED) return;   /* Open + Close(error) */
    io->opened = 1;
    io->opened_at = fa_monotonic();
    io->delay = io->retry_interval;
    drop_timers(io, T_CONNECT_TIMEOUT);
    if (io->trace && io->hosts[io->cur_host].password)
        pn_transport_trace(io->driver.transport, PN_TRACE_FRM);   /* after SASL */
    /* The dispatcher answers this event with the addresses to use (they depend on the
     * peer's properties): without it, or with it incomplete, the connection would
     * never be used. Out of memory, the connection goes instead. */
    int oom = 0;
    fa_event *ev = new_event(FA_EV_OPENED, io->generation);
    if (!ev) { drop_for_memory(io, "the peer's Open"); return; }
    ev->host = io->cur_host;
    const char *container = pn_connection_remote_container(c);
    const char *mech = pn_sasl_get_mech(pn_sasl(io->driver.transport));
    ev->text = fa_strdup(container);
    ev->mech = fa_strdup(mech);
    oom |= LOST(ev->text, container) || LOST(ev->mech, mech);
    if (io->tls) {
        pn_ssl_t *ssl = pn_ssl(io->driver.transport);
        char buf[128];
        const char *subject = pn_ssl_get_remote_subject(ssl);
        ev->tls_subject = fa_strdup(subject);
        oom |= LOST(ev->tls_subject, subject);
        if (pn_ssl_get_protocol_name(ssl, buf, sizeof buf))
            oom |= !(ev->tls_protocol = strdup(buf));
        if (pn_ssl_get_cipher_name(ssl, buf, sizeof buf))
            oom |= !(ev->tls_cipher = strdup(buf));
    }
    pn_data_t *p = pn_connection_remote_properties(c);
    pn_data_rewind(p);
    if (!oom && pn_data_next(p) && pn_data_type(p) == PN_MAP) {
        size_t n = pn_data_get_map(p) / 2, k = 0;
        ev->props = calloc(2 * n + 1, sizeof(char *));
        if (!ev->props) n = 0, oom = 1;
        pn_data_enter(p);
        while (pn_data_next(p)) {
            pn_type_t kt = pn_data_type(p);
            pn_bytes_t key = (kt == PN_SYMBOL) ? pn_data_get_symbol(p)
                             : (kt == PN_STRING) ? pn_data_get_string(p) : pn_bytes(0, NULL);
            if (!pn_data_next(p)) break;
            pn_type_t vt = pn_data_type(p);
            if (key.start && (vt == PN_STRING || vt == PN_SYMBOL) && k < n) {
                pn_bytes_t v = vt == PN_STRING ? pn_data_get_string(p) : pn_data_get_symbol(p);
                ev->props[2 * k] = strndup(key.start, key.size);
                ev->props[2 * k + 1] = strndup(v.start, v.size);
                oom |= !ev->props[2 * k] || !ev->props[2 * k + 1];
                k++;
            }
        }
        pn_data_exit(p);
        ev->nprops = (int)k;
    }
    if (oom) {
        fa_event_free(ev);
        drop_for_memory(io, "the peer's Open");
        return;
    }
    post(io, ev);
}

static void activate(fa_io *io, uint64_t generation, const char *reply_address)
{
    fa_sub *sub;
    fa_op *op;
    if (generation != io->generation || !io->opened || io->activated || io->closing) return;
    io->activated = 1;
    /* Calls registered while the last connection was being lost missed fail_calls(),
     * and their requests carry a reply address that is gone: fail them now rather
     * than let them wait for their deadline. */
    pthread_mutex_lock(&io->lock);
    {
        size_t i;
        fa_entry *e;
        for (i = 0; i < io->calls.nbuckets; i++)
            for (e = io->calls.buckets[i]; e; e = e->next) {
                fa_call *call = e->value;
                if (call->generation < io->generation)
                    call_fail_locked(io, call, FA_ERR_LOST,
                                     "connection lost while the call was being sent");
            }
    }
    pthread_mutex_unlock(&io->lock);
    io->reply_link = attach_receiver(io, NULL, reply_address, io->reply_credit,
                                     reply_address == NULL);
    if (!io->reply_link) { drop_for_memory(io, "the reply link"); return; }
    for (sub = io->subs; sub; sub = sub->io_next) {
        if (attach_sub(io, sub) != 0) { drop_for_memory(io, "a subscription"); return; }
    }
    fa_event *active = new_event(FA_EV_ACTIVE, io->generation);
    if (!active) { drop_for_memory(io, "activating"); return; }
    pthread_mutex_lock(&io->lock);
    io->active = 1;
    status_changed_locked(io);
    post_locked(io, active);
    pthread_mutex_unlock(&io->lock);
    if (io->lost_inflight)
        log_event(io, FA_LOG_INFO, "sending again %ld message(s) that were not settled "
                  "when the last connection was lost (at least once: the peer may have "
                  "had them)", io->lost_inflight);
    pthread_mutex_lock(&io->lock);
    io->st.resent_after_loss += io->lost_inflight;
    io->st.possibly_duplicated += io->lost_inflight;
    pthread_mutex_unlock(&io->lock);
    io->lost_inflight = 0;
    oplist again = io->resubmit;
    memset(&io->resubmit, 0, sizeof io->resubmit);
    for (op = again.head; op; op = op->next) op->list = &again;
    while ((op = list_pop(&again))) submit(io, op);
}

static void on_link_remote_open(fa_io *io, pn_link_t *l)
{
    void *ctx = pn_link_get_context(l);
    if (!ctx) return;
    if (pn_link_is_sender(l)) {
        sender *s = ctx;
        /* A peer refusing the link answers with no target, then detaches it. */
        if (!pn_terminus_get_address(pn_link_remote_target(l))) return;
        s->active = 1;
        s->active_since = fa_monotonic();
        drain_waiting(io, s);
    } else if ((rlink *)ctx == io->reply_link) {
        const char *address = pn_terminus_get_address(pn_link_remote_source(l));
        if (!address) return;          /* refused: a detach follows */
        char *copy = strdup(address);
        fa_event *ev = new_text_event(FA_EV_REPLY_READY, io->generation, address);
        if (!copy || !ev) {
            /* Calls need the reply address: without it the connection is no use. */
            free(copy);
            fa_event_free(ev);
            drop_for_memory(io, "the reply address");
            return;
        }
        pthread_mutex_lock(&io->lock);
        free(io->reply_address);
        io->reply_address = copy;
        status_changed_locked(io);
        post_locked(io, ev);
        pthread_mutex_unlock(&io->lock);
    }
}

static void on_link_remote_close(fa_io *io, pn_link_t *l)
{
    void *ctx = pn_link_get_context(l);
    char why[300];
    if (!ctx) { pn_link_close(l); return; }
    describe_condition(pn_link_remote_condition(l), why, sizeof why);
    pn_link_set_context(l, NULL);
    if (pn_link_is_sender(l)) sender_lost(io, ctx, why);
    else receiver_lost(io, ctx);
}

static void handle(fa_io *io, pn_event_t *e)
{
    pn_link_t *l;
    pn_delivery_t *d;
    switch (pn_event_type(e)) {
    case PN_CONNECTION_REMOTE_OPEN:
        on_remote_open(io, pn_event_connection(e));
        break;
    case PN_CONNECTION_REMOTE_CLOSE:
        pn_connection_close(pn_event_connection(e));
        break;
    case PN_SESSION_REMOTE_CLOSE:
        /* All our links live on this one session: a peer that ends it (RabbitMQ 4
         * does, refusing an attach to a missing queue or a permission) has ended
         * everything; start afresh on a new connection, as the pure engine does. */
        if (pn_event_session(e) == io->session && io->have_driver) {
            char why[300];
            describe_condition(pn_session_remote_condition(io->session), why, sizeof why);
            pn_connection_driver_close(&io->driver);
            connection_lost(io, "the peer ended the session: %s", why);
        }
        break;
    case PN_LINK_REMOTE_OPEN:
        on_link_remote_open(io, pn_event_link(e));
        break;
    case PN_LINK_REMOTE_CLOSE:
    case PN_LINK_REMOTE_DETACH:
        on_link_remote_close(io, pn_event_link(e));
        break;
    case PN_LINK_FLOW:
        l = pn_event_link(e);
        if (pn_link_is_sender(l) && pn_link_get_context(l)) {
            sender *s = pn_link_get_context(l);
            if (pn_link_credit(l) > 0) s->credit_seen = 1;
            drain_waiting(io, s);
        }
        break;
    case PN_DELIVERY:
        d = pn_event_delivery(e);
        l = pn_delivery_link(d);
        if (pn_link_is_sender(l)) {
            if (pn_delivery_updated(d)) on_outcome(io, d);
        } else if (pn_delivery_aborted(d)) {
            /* The sender gave up on a multi-frame message: nothing to hand over. */
            pn_delivery_settle(d);
        } else if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
            rlink *r = pn_link_get_context(l);
            if (!r || r->closed) {
                pn_link_advance(l);
                pn_delivery_update(d, PN_RELEASED);
                pn_delivery_settle(d);
            } else if (!r->sub) {
                on_reply(io, r, d);
            } else {
                on_message(io, r, d);
            }
        }
        break;
    default:
        break;
    }
}

/* ---- the loop ----------------------------------------------------------------------- */

static void begin_close(fa_io *io);

static void run_commands(fa_io *io)
{
    pthread_mutex_lock(&io->lock);
    cmd *c = io->cmd_head;
    fa_op *ops = io->sub_head;
    fa_rec *recs = io->settle_head;
    io->cmd_head = io->cmd_tail = NULL;
    io->sub_head = io->sub_tail = NULL;
    io->settle_head = io->settle_tail = NULL;
    /* A close is taken with the sends queued before it, which go out first. */
    int close = io->close_req;
    io->close_req = 0;
    if (close) {
        io->drain = io->close_drain;
        if (io->abort_req) io->quit = 1;
    }
    uint64_t activate_failed = io->activate_failed;
    io->activate_failed = 0;
    fa_waker_clear(&io->cmd_wake);
    pthread_mutex_unlock(&io->lock);
    if (activate_failed && activate_failed == io->generation && !io->activated)
        drop_for_memory(io, "activating");

    /* Outcomes first: one the caller settled before it unsubscribed must reach the
     * peer before the detach, or a router releases the message to its sender, which
     * sends again a request that has already run. */
    while (recs) {
        fa_rec *next = recs->next;
        settle_rec(io, recs);
        recs = next;
    }
    while (c) {
        cmd *next = c->next;
        fa_sub *sub = c->ptr, **p;
        switch (c->kind) {
        case CMD_SUBSCRIBE:
            sub->io_next = io->subs;   /* the reference taken in fa_io_subscribe */
            io->subs = sub;
            if (io->activated && attach_sub(io, sub) != 0)
                drop_for_memory(io, "a subscription");
            break;
        case CMD_UNSUBSCRIBE: {
            rlink *rl;
            for (p = &io->subs; *p; p = &(*p)->io_next) {
                if (*p == sub) { *p = sub->io_next; fa_sub_unref(sub); break; }
            }
            for (rl = io->rlinks; rl; rl = rl->next) {
                if (rl->sub == sub && !rl->closed) {
                    rl->closed = 1;
                    /* Its events must not reach the sub, which may be freed below;
                     * records already taken still find the (closed) rlink. */
                    pn_link_set_context(rl->link, NULL);
                    pn_link_close(rl->link);
                }
            }
            fa_sub_unref(sub);         /* the command's reference */
            break;
        }
        case CMD_ACTIVATE:
            activate(io, c->generation, c->text);
            break;
        }
        free(c->text);
        free(c);
        c = next;
    }
    while (ops) {
        fa_op *next = ops->cmd_next;
        submit(io, ops);
        ops = next;
    }
    if (close && !io->closing && !io->draining) {
        if (io->drain > 0 && !io->quit) {
            /* Confirmed sends the callers think are gone: give the peer time to
             * settle them (drain_or_close). */
            io->draining = 1;
            io->drain_until = fa_monotonic() + io->drain;
        } else {
            begin_close(io);
        }
    }
}

static void begin_close(fa_io *io)
{
    fa_sub *sub;
    io->closing = 1;
    for (sub = io->subs; sub; sub = sub->io_next) fa_sub_stop(io, sub);
    if (io->have_driver && io->opened) {
        pn_connection_close(io->driver.connection);
        add_timer(io, CLOSE_GRACE, T_CLOSE_GRACE, NULL, NULL);
    } else {
        io->quit = 1;
    }
}

/* While closing with a drain time: close once nothing is held, or at the limit,
 * saying what was given up. */
static void drain_or_close(fa_io *io, double now)
{
    long held;
    if (!io->draining) return;
    pthread_mutex_lock(&io->lock);
    held = io->held;
    pthread_mutex_unlock(&io->lock);
    if (held && now < io->drain_until) return;
    io->draining = 0;
    if (held)
        log_event(io, FA_LOG_WARNING, "closing with %ld confirmed message(s) the peer "
                  "has not settled after %.1f s: given up", held, io->drain);
    begin_close(io);
}

static void process_events(fa_io *io)
{
    pn_event_t *e;
    while (io->have_driver && (e = pn_connection_driver_next_event(&io->driver)))
        handle(io, e);
}

/* Write what Proton has produced; complete pre-settled sends whose bytes are out. */
static void flush_output(fa_io *io)
{
    fa_op *op;
    if (!io->have_driver || io->connecting) return;
    for (;;) {
        pn_bytes_t out = pn_connection_driver_write_buffer(&io->driver);
        /* Everything handed to the transport so far is now encoded into out. */
        while ((op = list_pop(&io->justsent))) {
            op->mark = io->written_total + out.size;
            list_push(&io->written, op);
        }
        ssize_t n = fa_driver_write(&io->driver, io->sock);
        if (n <= 0) break;
        io->written_total += (uint64_t)n;
        process_events(io);
    }
    while ((op = io->written.head) && op->mark <= io->written_total) {
        list_remove(op);
        op_finish(io, op, FA_DONE, FA_ACCEPTED, 0, NULL);
        op_release(io, op);
    }
}

static void do_read(fa_io *io)
{
    bool full = true;
    while (full && fa_driver_read(&io->driver, io->sock, &full) > 0) {
        process_events(io);
        if (!io->have_driver) return;
    }
}

/* Detach sender links with nothing to send for longer than sender_link_timeout (the
 * original's default_sender_link_timeout): a service that once sent to many servers
 * does not keep a link to each for ever. */
static void purge_senders(fa_io *io, double now)
{
    size_t i;
    if (io->sender_timeout <= 0 || now < io->next_purge) return;
    io->next_purge = now + (io->sender_timeout / 2 < 10 ? io->sender_timeout / 2 : 10);
    if (!io->activated) return;
    for (i = 0; i < io->senders.nbuckets; i++) {
        fa_entry *e = io->senders.buckets[i];
        while (e) {
            sender *s = e->value;
            e = e->next;              /* map_del frees the entry */
            if (!s->waiting.head && !s->inflight.head &&
                now - s->last_used > io->sender_timeout) {
                fa_map_del(&io->senders, s->address);
                pn_link_set_context(s->link, NULL);
                pn_link_close(s->link);
                free_sender(io, s);
            }
        }
    }
}

static void expire(fa_io *io, double now)
{
    size_t i;
    fa_op *op;
    purge_senders(io, now);
    while (io->heap_len && io->heap[0]->expiry <= now) {
        op = io->heap[0];
        heap_remove(io, op);
        sender *s = io->activated ? fa_map_get(&io->senders, op->address) : NULL;
        if (op->expiry < op->deadline) {
            /* A fanout's credit check (submit): no credit ever, nobody receives it. */
            if (s && op->list == &s->waiting && !s->credit_seen) {
                drop_fanout(io, op);
            } else {
                op->expiry = op->deadline;
                heap_add(io, op);
            }
            continue;
        }
        if (op->confirm && op->early) {
            /* Taken: on the wire, its outcome decides (a connection loss brings it
             * back); anywhere else (no credit, no connection, a pause after a release)
             * it has had its time. */
            if (!op->delivery)
                op_fail(io, op, FA_ERR_TIMEOUT, "not settled by its deadline");
            continue;
        }
        int starved = !s || !(s->credit_seen || pn_link_credit(s->link) > 0);
        if (op->in_wwait)
            op_finish(io, op, FA_FAILED, 0, FA_ERR_WINDOW, NULL);
        else if (starved)
            op_finish(io, op, FA_FAILED, 0, FA_ERR_NO_CREDIT, NULL);
        else
            op_finish(io, op, FA_FAILED, 0, FA_ERR_TIMEOUT, NULL);
        /* It stays in its list until that list is next walked; done ops are dropped. */
    }
    /* Sends waiting out link_retry_delay after their link was detached. */
    for (op = io->retry.head; op;) {
        fa_op *next = op->next;
        if (op->retry_at <= now) { list_remove(op); submit(io, op); }
        op = next;
    }
    i = 0;
    while (i < io->ntimers) {
        timer t = io->timers[i];
        if (t.when > now) { i++; continue; }
        io->timers[i] = io->timers[--io->ntimers];
        switch (t.kind) {
        case T_RECONNECT:
            if (!io->have_driver) connect_next(io);
            break;
        case T_CONNECT_TIMEOUT:
            if (io->have_driver && !io->opened && t.generation == io->generation) {
                pn_connection_driver_errorf(&io->driver, "proton:io",
                                            "no answer within %.0f s", CONNECT_TIMEOUT);
                pn_connection_driver_close(&io->driver);
            }
            break;
        case T_CLOSE_GRACE:
            io->quit = 1;              /* do not wait forever for the peer */
            break;
        case T_REATTACH: {
            int closed;
            pthread_mutex_lock(&io->lock);
            closed = t.sub->closed;
            pthread_mutex_unlock(&io->lock);
            if (!closed && io->activated && t.generation == io->generation)
                attach_receiver(io, t.sub, t.address, t.sub->credit, 0);
            break;
        }
        }
        if (t.sub) fa_sub_unref(t.sub);
        free(t.address);
        i = 0;                        /* the array changed under us */
    }
}

static int poll_timeout_ms(fa_io *io, double now)
{
    double until = now + 1.0;
    size_t i;
    if (io->heap_len && io->heap[0]->expiry < until) until = io->heap[0]->expiry;
    if (io->draining && io->drain_until < until) until = io->drain_until;
    for (i = 0; i < io->ntimers; i++)
        if (io->timers[i].when < until) until = io->timers[i].when;
    if (io->retry.head) {
        fa_op *op;
        for (op = io->retry.head; op; op = op->next)
            if (op->retry_at < until) until = op->retry_at;
    }
    if (io->have_driver && !io->connecting) {
        int64_t tick = pn_transport_tick(io->driver.transport, (int64_t)(now * 1000));
        if (tick && tick / 1000.0 < until) until = tick / 1000.0;
    }
    double ms = (until - now) * 1000.0;
    if (ms < 0) ms = 0;
    return (int)(ms + 0.999);
}

static void finish(fa_io *io)
{
    fa_op *op;
    fa_sub *sub;
    if (io->have_driver) {
        pn_connection_driver_close(&io->driver);
        connection_lost(io, "the connection was closed");
    }
    teardown(io);
    fail_calls(io, FA_ERR_CLOSED, "the connection was closed");
    while (io->heap_len) {
        op = io->heap[0];
        heap_remove(io, op);
        op_finish(io, op, FA_FAILED, 0, FA_ERR_CLOSED, "the connection was closed");
    }
    oplist *lists[] = { &io->resubmit, &io->retry, &io->justsent, &io->written };
    size_t i;
    for (i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        while ((op = list_pop(lists[i]))) {
            op_finish(io, op, FA_FAILED, 0, FA_ERR_CLOSED, "the connection was closed");
            op_release(io, op);
        }
    }
    while ((sub = io->subs)) {
        io->subs = sub->io_next;
        fa_sub_stop(io, sub);
        fa_sub_unref(sub);
    }
    drop_timers(io, T_REATTACH);
    drop_timers(io, T_RECONNECT);
    drop_timers(io, T_CONNECT_TIMEOUT);
    drop_timers(io, T_CLOSE_GRACE);
    /* Commands that arrived after the close: fail or free them. */
    pthread_mutex_lock(&io->lock);
    fa_op *ops = io->sub_head;
    fa_rec *recs = io->settle_head;
    cmd *c = io->cmd_head;
    io->sub_head = io->sub_tail = NULL;
    io->settle_head = io->settle_tail = NULL;
    io->cmd_head = io->cmd_tail = NULL;
    pthread_mutex_unlock(&io->lock);
    while (ops) {
        fa_op *next = ops->cmd_next;
        op_finish(io, ops, FA_FAILED, 0, FA_ERR_CLOSED, "the connection was closed");
        fa_op_unref(ops);
        ops = next;
    }
    while (recs) { fa_rec *next = recs->next; fa_rec_free(recs); recs = next; }
    while (c) {
        cmd *next = c->next;
        if (c->kind == CMD_SUBSCRIBE || c->kind == CMD_UNSUBSCRIBE) {
            fa_sub_stop(io, c->ptr);
            fa_sub_unref(c->ptr);
        }
        free(c->text);
        free(c);
        c = next;
    }
}

static void *io_main(void *arg)
{
    fa_io *io = arg;
    connect_next(io);
    while (!io->quit) {
        double now = fa_monotonic();
        struct pollfd fds[2];
        int nfds = 1;
        fds[0].fd = io->cmd_wake.rfd;
        fds[0].events = POLLIN;
        fds[0].revents = 0;
        if (io->have_driver && io->sock >= 0) {
            fds[1].fd = io->sock;
            fds[1].events = io->connecting ? POLLOUT : fa_driver_events(&io->driver);
            fds[1].revents = 0;
            nfds = 2;
        }
        int timeout = poll_timeout_ms(io, now);
        if (poll(fds, nfds, timeout) < 0 && errno != EINTR) break;
        run_commands(io);
        if (nfds == 2 && io->have_driver && io->sock == fds[1].fd) {
            short rev = fds[1].revents;
            if (io->connecting && rev) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(io->sock, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    const fa_host *h = &io->hosts[io->cur_host];
                    pn_connection_driver_errorf(&io->driver, "proton:io",
                                                "cannot connect to %s:%d: %s",
                                                h->hostname, h->port, strerror(err));
                    pn_connection_driver_close(&io->driver);
                } else {
                    io->connecting = 0;
                }
            } else if (rev & (POLLIN | POLLHUP | POLLERR)) {
                do_read(io);
            }
        }
        process_events(io);
        flush_output(io);
        if (io->have_driver && !io->connecting)
            pn_transport_tick(io->driver.transport, (int64_t)(fa_monotonic() * 1000));
        process_events(io);
        flush_output(io);
        if (io->have_driver && pn_connection_driver_finished(&io->driver)) {
            connection_lost(io, io->opened ? "connection closed" : "connection failed");
        }
        expire(io, fa_monotonic());
        drain_or_close(io, fa_monotonic());
        if (io->closing && !io->have_driver) io->quit = 1;
    }
    finish(io);
    fa_event *ev = io->stopped_ev;     /* made by fa_io_new: never out of memory */
    io->stopped_ev = NULL;
    ev->generation = io->generation;
    pthread_mutex_lock(&io->lock);
    io->ended = 1;
    status_changed_locked(io);
    post_locked(io, ev);
    pthread_mutex_unlock(&io->lock);
    return NULL;
}
