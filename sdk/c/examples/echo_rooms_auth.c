/* A corelay backend in C: echo, rooms (join/leave/publish), token auth, a subprotocol,
 * deferred replies. It implements the contract `corelay backend-check` drives
 * (docs/backend-check.md) and honours CORELAY_ATTACH, CORELAY_ROUTE, CORELAY_HEARTBEAT_MS
 * and CORELAY_TAG.
 *
 * Build: cc -O2 -o echo_rooms_auth echo_rooms_auth.c -I../include \
 *          ../../../target/release/libcorelay_backend.a -lpthread -ldl -lm
 *   or   cc ... $(pkg-config --cflags --libs corelay-backend)
 */
#include "corelay_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-connection state: open connections and the request each one holds (`hold:X`). */
struct conn_state {
    uint64_t conn;
    int is_open; /* accepted by this process (a predecessor's connections are not counted) */
    int holding;
    corelay_deferred held;
    char *held_text;
    size_t held_len;
};

struct service {
    const char *tag;
    size_t tag_len;
    struct conn_state *conns;
    size_t n, cap;
    unsigned char *buf; /* scratch for tagged echoes */
    size_t buf_cap;
};

static struct conn_state *find(struct service *s, uint64_t conn) {
    for (size_t i = 0; i < s->n; i++)
        if (s->conns[i].conn == conn) return &s->conns[i];
    return NULL;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return q;
}

static struct conn_state *get(struct service *s, uint64_t conn) {
    struct conn_state *c = find(s, conn);
    if (c) return c;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->conns = xrealloc(s->conns, s->cap * sizeof *s->conns);
    }
    s->conns[s->n] = (struct conn_state){.conn = conn};
    return &s->conns[s->n++];
}

static size_t count_open(const struct service *s) {
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++) k += s->conns[i].is_open;
    return k;
}

static int bytes_eq(const uint8_t *p, size_t n, const char *s) {
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

static int starts(const uint8_t *p, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(p, prefix, k) == 0;
}

/* Whether the query string has token=letmein. */
static int query_has_token(const uint8_t *q, size_t n) {
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && q[j] != '&') j++;
        if (bytes_eq(q + i, j - i, "token=letmein")) return 1;
        i = j + 1;
    }
    return 0;
}

/* Whether a comma-separated header value lists `want` (spaces around items ignored). */
static int lists(const uint8_t *v, size_t n, const char *want) {
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && v[j] != ',') j++;
        size_t a = i, b = j;
        while (a < b && v[a] == ' ') a++;
        while (b > a && v[b - 1] == ' ') b--;
        if (bytes_eq(v + a, b - a, want)) return 1;
        i = j + 1;
    }
    return 0;
}

static int header(const corelay_open_request *req, const char *name, const uint8_t **val, size_t *len) {
    const uint8_t *n;
    size_t nl;
    for (size_t i = 0; i < req->header_count; i++) {
        if (corelay_open_header(req, i, &n, &nl, val, len) == 0 && bytes_eq(n, nl, name)) return 1;
    }
    return 0;
}

static void on_open(void *user, corelay_ctx *ctx, uint64_t conn, const corelay_open_request *req) {
    struct service *s = user;
    const uint8_t *v;
    size_t vl;
    if (bytes_eq(req->path, req->path_len, "/deny")) {
        corelay_reject(ctx, 403);
        return;
    }
    if (bytes_eq(req->path, req->path_len, "/auth")) {
        int ok = query_has_token(req->query, req->query_len) ||
                 (header(req, "authorization", &v, &vl) && bytes_eq(v, vl, "Bearer letmein"));
        if (!ok) {
            corelay_reject(ctx, 401);
            return;
        }
    }
    if (bytes_eq(req->path, req->path_len, "/proto") &&
        header(req, "sec-websocket-protocol", &v, &vl) && lists(v, vl, "check.v1")) {
        corelay_accept(ctx, (const uint8_t *)"check.v1", 8);
    } else {
        corelay_accept(ctx, NULL, 0);
    }
    get(s, conn)->is_open = 1;
}

static uint64_t group(const uint8_t *p, size_t n) { return corelay_group_id(p, n); }

static void reply_text(corelay_ctx *ctx, const char *prefix, const uint8_t *rest, size_t n) {
    size_t k = strlen(prefix);
    unsigned char *b = xrealloc(NULL, k + n);
    memcpy(b, prefix, k);
    memcpy(b + k, rest, n);
    corelay_reply(ctx, 0, b, k + n);
    free(b);
}

static void on_message(void *user, corelay_ctx *ctx, uint64_t conn, int binary, const uint8_t *d, size_t n) {
    struct service *s = user;
    /* A connection opened with a predecessor (restart, handover) is new to us. */
    struct conn_state *c = get(s, conn);
    /* The request this connection held: completed after this message, out of order. */
    int had = 0;
    corelay_deferred earlier;
    char *earlier_text = NULL;
    size_t earlier_len = 0;
    if (c->holding) {
        had = 1;
        earlier = c->held;
        earlier_text = c->held_text;
        earlier_len = c->held_len;
        c->holding = 0;
        c->held_text = NULL;
    }
    if (binary) {
        goto echo;
    } else if (bytes_eq(d, n, "count")) {
        char num[32];
        int k = snprintf(num, sizeof num, "%zu", count_open(s));
        corelay_reply(ctx, 0, (const uint8_t *)num, (size_t)k);
    } else if (bytes_eq(d, n, "close")) {
        corelay_close(ctx, conn, 4000, (const uint8_t *)"bye", 3);
        corelay_done(ctx);
    } else if (starts(d, n, "hold:") || starts(d, n, "holdack:")) {
        size_t skip = starts(d, n, "hold:") ? 5 : 8;
        if (corelay_defer(ctx, &c->held) == 0) {
            c->holding = 1;
            c->held_len = n - skip;
            c->held_text = xrealloc(NULL, c->held_len);
            memcpy(c->held_text, d + skip, c->held_len);
            /* Pushed at once: tells the checker the request is now deferred. */
            if (skip == 8) corelay_send(ctx, conn, 0, (const uint8_t *)"held", 4);
        }
    } else if (starts(d, n, "join:")) {
        corelay_join(ctx, conn, group(d + 5, n - 5));
        reply_text(ctx, "joined:", d + 5, n - 5);
    } else if (starts(d, n, "leave:")) {
        corelay_leave(ctx, conn, group(d + 6, n - 6));
        reply_text(ctx, "left:", d + 6, n - 6);
    } else if (starts(d, n, "pub:") && memchr(d + 4, ':', n - 4)) {
        const uint8_t *colon = memchr(d + 4, ':', n - 4);
        size_t room_len = (size_t)(colon - (d + 4));
        corelay_publish(ctx, group(d + 4, room_len), 0, colon + 1, n - 5 - room_len);
        corelay_done(ctx);
    } else if (starts(d, n, "push:")) {
        corelay_send(ctx, conn, 0, d + 5, n - 5);
        corelay_reply(ctx, 0, (const uint8_t *)"pushed", 6);
    } else {
    echo:
        if (s->tag_len == 0) {
            corelay_reply(ctx, binary, d, n);
        } else {
            if (s->buf_cap < s->tag_len + n) {
                s->buf_cap = s->tag_len + n;
                s->buf = xrealloc(s->buf, s->buf_cap);
            }
            memcpy(s->buf, s->tag, s->tag_len);
            if (n) memcpy(s->buf + s->tag_len, d, n);
            corelay_reply(ctx, binary, s->buf, s->tag_len + n);
        }
    }
    if (had) {
        corelay_reply_to(ctx, earlier, 0, (const uint8_t *)earlier_text, earlier_len);
        free(earlier_text);
    }
}

static void on_closed(void *user, corelay_ctx *ctx, uint64_t conn, uint16_t code, const uint8_t *r, size_t n) {
    struct service *s = user;
    (void)code, (void)r, (void)n;
    struct conn_state *c = find(s, conn);
    if (!c) return;
    if (c->holding) {
        corelay_done_with(ctx, c->held);
        free(c->held_text);
    }
    *c = s->conns[--s->n];
}

int main(void) {
    struct service s = {0};
    s.tag = getenv("CORELAY_TAG");
    if (!s.tag) s.tag = "";
    s.tag_len = strlen(s.tag);
    corelay_backend *b = NULL;
    /* CORELAY_ATTACH, CORELAY_ROUTE, CORELAY_HEARTBEAT_MS; retry 10 s while the gateway starts. */
    if (corelay_attach_env(10000, &b) != CORELAY_STATUS_OK) {
        fprintf(stderr, "attach: %s\n", corelay_last_error());
        return 1;
    }
    fprintf(stderr, "C backend attached (%zu shards)\n", corelay_shards(b));
    corelay_callbacks cbs = {.user = &s, .on_open = on_open, .on_message = on_message, .on_closed = on_closed};
    corelay_status st = corelay_run(b, &cbs);
    if (st != CORELAY_STATUS_GATEWAY_GONE) fprintf(stderr, "run: %s\n", corelay_last_error());
    corelay_backend_free(b);
    free(s.conns);
    free(s.buf);
    return st == CORELAY_STATUS_GATEWAY_GONE ? 0 : 1;
}
