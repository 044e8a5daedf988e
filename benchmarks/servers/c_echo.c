/*
 * c_echo: a minimal single-threaded epoll WebSocket echo server, the machine's ceiling.
 *
 *   /         echo every data frame back (same opcode, unmasked), answer pings, echo close
 *   /fanout   receive broadcasts
 *   /trigger  every data message received here is sent to all /fanout connections
 *
 * No extensions (a permessage-deflate offer is simply declined). Reads until EAGAIN, then writes
 * once per read batch. Usage: c_echo --host 127.0.0.1 --port 9000; prints "listening on ws://H:P/".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../loadgen/ws_util.h"

#define RBUF_SIZE (256 * 1024)
#define MAX_REQUEST 8192
#define MAX_FRAME (16u << 20)
#define OUT_HIGH_WATER (4u << 20) /* stop reading a connection whose output backs up */

enum { ROUTE_ECHO, ROUTE_FANOUT, ROUTE_TRIGGER };

typedef struct Conn {
    int fd;
    bool ws;        /* handshake done */
    bool closing;   /* close frame sent: close TCP once output is flushed */
    bool paused;    /* reading stopped by OUT_HIGH_WATER */
    bool dead;      /* closed; freed after the current epoll batch */
    int route;
    int fan_idx;    /* index in g_fan when route == ROUTE_FANOUT */
    uint8_t *in;    /* unparsed input (partial request / frame), NULL when empty */
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
} Conn;

static int g_ep;
static uint8_t *g_rbuf;
static Conn **g_fan;
static size_t g_nfan, g_fan_cap;
static Conn **g_dead; /* closed this batch: epoll events may still point at them */
static size_t g_ndead, g_dead_cap;

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* ------------------------------------------------------------------ buffers */

static void buf_reserve(uint8_t **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    *buf = realloc(*buf, c);
    if (!*buf) die("realloc");
    *cap = c;
}

/* Reserve n bytes at the end of the output buffer and return where to write them. */
static uint8_t *out_reserve(Conn *c, size_t n) {
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    buf_reserve(&c->out, &c->out_cap, c->out_len + n);
    return c->out + c->out_len;
}

static void out_append(Conn *c, const void *p, size_t n) {
    memcpy(out_reserve(c, n), p, n);
    c->out_len += n;
}

/* ------------------------------------------------------------------ lifecycle */

static void conn_close(Conn *c) {
    if (c->dead) return;
    if (c->route == ROUTE_FANOUT && c->ws) { /* swap-remove from the fan-out list */
        Conn *last = g_fan[--g_nfan];
        g_fan[c->fan_idx] = last;
        last->fan_idx = c->fan_idx;
    }
    close(c->fd);
    c->dead = true;
    if (g_ndead == g_dead_cap) {
        g_dead_cap = g_dead_cap ? g_dead_cap * 2 : 256;
        g_dead = realloc(g_dead, g_dead_cap * sizeof(*g_dead));
        if (!g_dead) die("realloc");
    }
    g_dead[g_ndead++] = c;
}

static void free_dead(void) {
    for (size_t i = 0; i < g_ndead; i++) {
        free(g_dead[i]->in);
        free(g_dead[i]->out);
        free(g_dead[i]);
    }
    g_ndead = 0;
}

/* Returns -1 if the connection had to be closed. */
static int flush(Conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) return 0;
            if (errno == EINTR) continue;
            conn_close(c);
            return -1;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    if (c->out) { /* idle connections hold no buffers; malloc per batch is cheap */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (c->closing) { /* RFC 6455 7.1.1: the server closes TCP first */
        conn_close(c);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ HTTP upgrade */

static const char *find_header(char *req, const char *name, size_t *len) {
    size_t nl = strlen(name);
    for (char *line = strstr(req, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t') v++;
            char *e = strstr(v, "\r\n");
            if (!e) return NULL;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            *len = (size_t)(e - v);
            return v;
        }
    }
    return NULL;
}

/* Handles a complete request head (NUL-terminated); returns -1 to close. */
static int upgrade(Conn *c, char *req) {
    size_t klen = 0;
    const char *key = find_header(req, "Sec-WebSocket-Key", &klen);
    if (strncmp(req, "GET ", 4) != 0 || !key || klen > 60) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        out_append(c, bad, sizeof(bad) - 1);
        c->closing = true;
        return 0;
    }
    const char *path = req + 4;
    if (strncmp(path, "/fanout ", 8) == 0) {
        c->route = ROUTE_FANOUT;
        if (g_nfan == g_fan_cap) {
            g_fan_cap = g_fan_cap ? g_fan_cap * 2 : 1024;
            g_fan = realloc(g_fan, g_fan_cap * sizeof(*g_fan));
            if (!g_fan) die("realloc");
        }
        c->fan_idx = (int)g_nfan;
        g_fan[g_nfan++] = c;
    } else if (strncmp(path, "/trigger ", 9) == 0) {
        c->route = ROUTE_TRIGGER;
    }
    char accept[29], resp[256];
    ws_accept_for_key(key, klen, accept);
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    out_append(c, resp, (size_t)n);
    c->ws = true;
    return 0;
}

/* Consumes request bytes; returns bytes used, or -1 to close. */
static long feed_http(Conn *c, const uint8_t *p, size_t n) {
    /* Requests are small: always accumulate into c->in and look for the blank line. */
    buf_reserve(&c->in, &c->in_cap, c->in_len + n + 1);
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    c->in[c->in_len] = 0;
    char *end = strstr((char *)c->in, "\r\n\r\n");
    if (!end) return c->in_len > MAX_REQUEST ? -1 : (long)n;
    size_t head = (size_t)(end - (char *)c->in) + 4;
    end[2] = 0;
    if (upgrade(c, (char *)c->in) < 0) return -1;
    size_t extra = c->in_len - head; /* frames pipelined after the request */
    c->in_len = 0;
    free(c->in);
    c->in = NULL;
    c->in_cap = 0;
    return (long)(n - extra);
}

/* ------------------------------------------------------------------ frames */

static void write_frame(Conn *c, uint8_t b0, const uint8_t *payload, size_t len, const uint8_t *mask) {
    uint8_t *dst = out_reserve(c, len + 10);
    size_t h = ws_write_header(dst, b0, len, NULL);
    if (mask) ws_mask(dst + h, payload, len, mask, 0);
    else memcpy(dst + h, payload, len);
    c->out_len += h + len;
}

/* Send now if nothing is queued (the usual case), else queue behind the pending output. */
static void send_or_queue(Conn *c, const uint8_t *p, size_t n) {
    if (c->out_len == c->out_off) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w == (ssize_t)n) return;
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            conn_close(c);
            return;
        }
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
    }
    out_append(c, p, n); /* EPOLLOUT flushes it */
}

static void broadcast(const uint8_t *payload, size_t len, const uint8_t *mask, uint8_t b0) {
    static uint8_t *frame;
    static size_t frame_cap;
    buf_reserve(&frame, &frame_cap, len + 10); /* build the frame once */
    size_t h = ws_write_header(frame, b0, len, NULL);
    ws_mask(frame + h, payload, len, mask, 0);
    /* From the last: a failed send swap-removes a receiver, moving one already served. */
    for (size_t i = g_nfan; i-- > 0;) send_or_queue(g_fan[i], frame, h + len);
}

/* Parses complete frames in p[0..n); returns bytes consumed, or -1 to close. */
static long feed_frames(Conn *c, uint8_t *p, size_t n) {
    size_t off = 0;
    while (n - off >= 2) {
        uint8_t b0 = p[off], b1 = p[off + 1];
        size_t h = 2;
        uint64_t len = b1 & 0x7F;
        if (len == 126) {
            if (n - off < 4) break;
            len = (uint64_t)p[off + 2] << 8 | p[off + 3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | p[off + 2 + i];
            h = 10;
        }
        if (!(b1 & 0x80) || (b0 & 0x70) || len > MAX_FRAME) return -1; /* unmasked / RSV / huge */
        if (n - off < h + 4 + len) break;
        const uint8_t *mask = p + off + h;
        uint8_t *payload = p + off + h + 4;
        uint8_t op = b0 & 0x0F;
        if (op == 0x8) { /* close: echo it, then close once flushed */
            write_frame(c, 0x88, payload, len > 125 ? 125 : len, mask);
            c->closing = true;
            return (long)n;
        } else if (op == 0x9) {
            write_frame(c, 0x8A, payload, len, mask);
        } else if (op == 0xA) {
            /* pong: nothing */
        } else if (c->route == ROUTE_ECHO) {
            write_frame(c, b0, payload, len, mask);
        } else if (c->route == ROUTE_TRIGGER) {
            broadcast(payload, len, mask, b0);
        }
        off += h + 4 + len;
    }
    return (long)off;
}

/* Feeds a chunk of input to the right parser, keeping any incomplete tail in c->in. */
static int feed(Conn *c, uint8_t *p, size_t n) {
    if (!c->ws) {
        long used = feed_http(c, p, n);
        if (used < 0) return -1;
        p += used;
        n -= (size_t)used;
        if (!c->ws || n == 0) return 0;
    }
    uint8_t *data = p;
    size_t len = n;
    if (c->in_len) { /* a partial frame is waiting: append and parse from the buffer */
        buf_reserve(&c->in, &c->in_cap, c->in_len + n);
        memcpy(c->in + c->in_len, p, n);
        c->in_len += n;
        data = c->in;
        len = c->in_len;
    }
    long used = feed_frames(c, data, len);
    if (used < 0) return -1;
    size_t rest = len - (size_t)used;
    if (rest == 0) {
        c->in_len = 0;
        if (c->in) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    } else {
        if (data != c->in) buf_reserve(&c->in, &c->in_cap, rest);
        memmove(c->in, data + used, rest);
        c->in_len = rest;
    }
    return 0;
}

/* Read until EAGAIN (edge-triggered), then write once. */
static void on_readable(Conn *c) {
    while (!c->closing) {
        if (c->out_len - c->out_off > OUT_HIGH_WATER) {
            c->paused = true; /* resumed from on_writable once the output drains */
            break;
        }
        ssize_t r = read(c->fd, g_rbuf, RBUF_SIZE);
        if (r > 0) {
            if (feed(c, g_rbuf, (size_t)r) < 0) {
                conn_close(c);
                return;
            }
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) break;
        conn_close(c); /* EOF or error */
        return;
    }
    flush(c);
}

static void on_writable(Conn *c) {
    if (flush(c) < 0) return;
    if (c->paused && c->out_len == c->out_off) {
        c->paused = false;
        on_readable(c);
    }
}

static void accept_all(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or out of fds: try again on the next event */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        Conn *c = calloc(1, sizeof(Conn));
        if (!c) die("calloc");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 9000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--no-compression") == 0) continue; /* never compresses */
        else {
            fprintf(stderr, "usage: c_echo [--host H] [--port P] [--no-compression]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    g_rbuf = malloc(RBUF_SIZE);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) die("inet_pton");
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    static int listen_marker;
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listen_marker};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &lev);
    printf("listening on ws://%s:%d/\n", host, port);
    fflush(stdout);
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(g_ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listen_marker) {
                accept_all(lfd);
                continue;
            }
            Conn *c = evs[i].data.ptr;
            if (c->dead) continue; /* closed earlier in this batch, e.g. by a broadcast */
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c);
            else if (evs[i].events & EPOLLOUT) on_writable(c); /* on_readable flushes too */
        }
        free_dead();
    }
}
