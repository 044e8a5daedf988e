/*
 * loadgen: a single-threaded epoll WebSocket load generator for echo servers.
 *
 * It does the client opening handshake itself (and checks Sec-WebSocket-Accept), masks every frame
 * as a client must, verifies every echo (opcode, length and content, sampled for big messages),
 * measures its own CPU time with getrusage, and prints one JSON object on stdout.
 *
 * Modes (see usage()):
 *   throughput  C connections x K messages in flight, size S; counts echoed messages for T seconds
 *   latency     1 connection, 1 message in flight; p50/p99/p99.9 round trip in microseconds
 *   handshakes  open + close handshake + TCP close, `concurrency` at a time, for T seconds
 *   idle        open N connections and hold them idle until stdin has a line/EOF (or --hold)
 *   deflate     like throughput with permessage-deflate: 1 KiB JSON-like text, compressed
 *   fanout      N connections on /fanout, 1 on /trigger; time until the last one gets the broadcast
 *
 * Load-generator shortcuts that do not change the server's work (documented in the README):
 * outgoing frames come from a small pool of pre-built, pre-masked frames (a fresh random key per
 * pool entry rather than per frame), and deflate messages are compressed once, each on its own
 * (a valid choice for a sender: the receiver's window just never gets referenced).
 *
 * Only loopback (127.0.0.0/8) targets are accepted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "ws_util.h"

#define NPOOL 256                 /* most distinct pre-built messages per run */
#define NKEYS 64                  /* distinct Sec-WebSocket-Key values */
#define RBUF_SIZE (256 * 1024)    /* shared read buffer */
#define MAX_EVENTS 1024
#define HBUF_SIZE 4096            /* handshake response buffer */
#define SMALL_MAX 256             /* fan-out messages are kept whole up to this size */
#define FULL_VERIFY_MAX 4096      /* payloads up to this size are compared byte for byte */
#define SAMPLE_STRIDE 4096        /* bigger payloads: every 4096th byte and the last one */
#define MAX_LAT_SAMPLES (4u << 20)
#define OP_CONT 0x0
#define OP_TEXT 0x1
#define OP_BINARY 0x2
#define OP_CLOSE 0x8
#define OP_PING 0x9
#define OP_PONG 0xA

typedef enum { M_THROUGHPUT, M_LATENCY, M_HANDSHAKES, M_IDLE, M_DEFLATE, M_FANOUT } Mode;
typedef enum { PH_RUN, PH_MEASURE, PH_STOP } Phase;
typedef enum { CS_FREE, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_CLOSING } ConnState;

typedef struct {
    Mode mode;
    const char *mode_name;
    const char *host;
    int port;
    const char *path;
    const char *fanout_path;
    const char *trigger_path;
    int conns;
    int inflight;
    size_t size;
    int binary; /* -1: auto (binary above 16 KiB) */
    double duration;
    double warmup;
    int concurrency;
    int connect_concurrency;
    int rounds;
    int warmup_rounds;
    int src_addrs;
    double hold;
    double timeout; /* per-connection opening/closing timeout, seconds */
    int server_pid; /* if set, the server's CPU use over the same window is reported too */
} Options;

typedef struct {
    uint8_t *payload; /* what the server must echo back (uncompressed) */
    size_t len;
    uint8_t *frame;   /* the masked frame we send */
    size_t frame_len;
} PoolMsg;

typedef struct {
    int fd;
    ConnState st;
    int id;
    const char *path;
    double t_start;     /* when the connect / close began, for timeouts */
    char *hbuf;         /* handshake response, only while CS_HANDSHAKE */
    size_t hlen;
    int key_idx;
    uint8_t *out;       /* pending output */
    size_t out_len, out_off, out_cap;
    /* frame parser */
    uint8_t fh[14];
    int fh_len;
    bool in_payload;
    uint64_t pay_left;
    uint8_t fop;
    bool ffin, frsv1;
    uint8_t ctrl[125];
    size_t ctrl_len;
    /* message being received */
    bool in_msg;
    uint8_t msg_op;
    bool msg_rsv1;
    uint64_t msg_off;
    /* pipeline */
    uint64_t sent, recvd;
    double t_sent;
    /* permessage-deflate */
    bool deflate;
    int client_wbits;
    z_stream *inf;
    uint8_t *inf_out;
    size_t inf_len, inf_cap;
    /* fan-out */
    uint8_t small[SMALL_MAX];
    size_t small_len;
    uint32_t fan_round;
    bool close_sent, close_recv;
} Conn;

typedef struct {
    uint64_t msgs, payload_bytes, rx_bytes, handshakes, cycles;
} Stats;

static Options opt;
static int g_ep = -1;
static struct sockaddr_in g_addr;
static Conn *g_conns;
static int g_nconns;
static int g_pending; /* connecting or handshaking */
static int g_open;    /* open or closing */
static int g_next_open;
static unsigned g_src_rr;
static Phase g_phase = PH_RUN;
static double g_now;
static Stats g_stats;
static uint64_t g_errors, g_verify_errors;
static char g_first_error[256];
static bool g_fatal;
static uint8_t *g_rbuf;
static PoolMsg g_pool[NPOOL];
/* 16 messages, but 256 for deflate: more than a 32 KiB window holds, so the server's
 * compressor (with context takeover) can't just point back at the same message. */
static size_t g_npool = 16;
static PoolMsg g_dpool[16][NPOOL]; /* compressed frames per client_max_window_bits */
static bool g_dpool_ready[16];
static char g_keys[NKEYS][25];
static char g_accepts[NKEYS][29];
static float *g_lat;
static size_t g_nlat;
static uint32_t g_round, g_round_count;
static double g_round_first, g_round_last;
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static int g_stdin_marker;
static int g_deflate_wbits; /* client_max_window_bits of the last deflate connection */

/* ---------------------------------------------------------------- utilities */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_next(void) { /* xorshift64*: payload filler, not security */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545F4914F6CDD1Dull;
}

static void random_bytes(void *buf, size_t n) {
    if (getrandom(buf, n, 0) != (ssize_t)n) {
        for (size_t i = 0; i < n; i++) ((uint8_t *)buf)[i] = (uint8_t)rng_next();
    }
}

static void note_error(const char *fmt, ...) {
    g_errors++;
    if (g_first_error[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_first_error, sizeof(g_first_error), fmt, ap);
    va_end(ap);
}

static void verify_error(Conn *c, const char *what) {
    g_verify_errors++;
    note_error("conn %d: bad echo: %s", c->id, what);
}

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n);
    if (!p) die("out of memory");
    return p;
}

static double cpu_seconds(struct rusage *ru) {
    return (double)ru->ru_utime.tv_sec + ru->ru_utime.tv_usec * 1e-6 +
           (double)ru->ru_stime.tv_sec + ru->ru_stime.tv_usec * 1e-6;
}

/* ---------------------------------------------------------------- message pools */

static bool use_binary(void) {
    if (opt.binary >= 0) return opt.binary;
    return opt.size > 16 * 1024;
}

/* A JSON-looking text of exactly `len` bytes (len >= 128), different for each seed. */
static void make_json(uint8_t *dst, size_t len, int seed) {
    static const char *words[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
                                  "golf", "hotel", "india", "juliet", "kilo", "lima"};
    char buf[8192];
    size_t n = (size_t)snprintf(buf, sizeof(buf),
                                "{\"id\":%d,\"type\":\"update\",\"channel\":\"prices.%s\",\"items\":[",
                                seed * 7919, words[seed % 12]);
    for (int i = 0; n < len + 64 && n < sizeof(buf) - 200; i++) {
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              "%s{\"symbol\":\"%s%d\",\"price\":%d.%02d,\"qty\":%d,\"side\":\"%s\"}",
                              i ? "," : "", words[(seed + i) % 12], i, 100 + (seed * 31 + i * 17) % 900,
                              (seed + i * 7) % 100, (i * 13 + seed) % 500, (i + seed) % 2 ? "buy" : "sell");
    }
    /* Close the JSON so that the total is exactly len: ...],"pad":"xxx"} */
    const char *tail_fmt = "],\"pad\":\"";
    size_t keep = len - strlen(tail_fmt) - 2 - 8; /* leave 8 pad chars at least */
    /* Cut back to the end of a whole item. */
    while (keep > 0 && buf[keep - 1] != '}') keep--;
    memcpy(dst, buf, keep);
    size_t o = keep;
    memcpy(dst + o, tail_fmt, strlen(tail_fmt));
    o += strlen(tail_fmt);
    for (; o < len - 2; o++) dst[o] = (uint8_t)('a' + (o + (size_t)seed) % 26);
    dst[o++] = '"';
    dst[o++] = '}';
}

static void build_frame(PoolMsg *m, uint8_t first_byte, const uint8_t *payload, size_t len) {
    uint8_t key[4];
    random_bytes(key, 4);
    m->frame = xmalloc(len + 14);
    size_t h = ws_write_header(m->frame, first_byte, len, key);
    ws_mask(m->frame + h, payload, len, key, 0);
    m->frame_len = h + len;
}

static void build_pool(void) {
    bool bin = use_binary() && opt.mode != M_DEFLATE;
    if (opt.mode == M_DEFLATE) g_npool = NPOOL;
    for (size_t i = 0; i < g_npool; i++) {
        PoolMsg *m = &g_pool[i];
        m->len = opt.size;
        m->payload = xmalloc(opt.size + 1);
        if (opt.mode == M_DEFLATE && opt.size >= 128 && opt.size <= 4096) {
            make_json(m->payload, opt.size, (int)i);
        } else if (bin) {
            for (size_t j = 0; j < opt.size; j++) m->payload[j] = (uint8_t)rng_next();
        } else {
            for (size_t j = 0; j < opt.size; j++) m->payload[j] = (uint8_t)('!' + (j * 7 + (size_t)i) % 90);
        }
        if (opt.mode == M_DEFLATE) continue; /* frames are built once the window size is known */
        build_frame(m, 0x80 | (bin ? OP_BINARY : OP_TEXT), m->payload, m->len);
    }
}

/* Compress each pool message on its own with the negotiated client window. */
static int build_deflate_pool(int wbits) {
    if (wbits < 8 || wbits > 15) return -1;
    if (g_dpool_ready[wbits]) return 0;
    /* zlib can't do raw deflate with an 8-bit window; stored blocks fit any window. */
    int level = wbits < 10 ? Z_NO_COMPRESSION : Z_DEFAULT_COMPRESSION;
    int zw = wbits < 9 ? 9 : wbits;
    for (size_t i = 0; i < g_npool; i++) {
        z_stream zs;
        memset(&zs, 0, sizeof(zs));
        if (deflateInit2(&zs, level, Z_DEFLATED, -zw, 8, Z_DEFAULT_STRATEGY) != Z_OK) return -1;
        size_t cap = deflateBound(&zs, g_pool[i].len) + 16;
        uint8_t *tmp = xmalloc(cap);
        zs.next_in = g_pool[i].payload;
        zs.avail_in = (uInt)g_pool[i].len;
        zs.next_out = tmp;
        zs.avail_out = (uInt)cap;
        int rc = deflate(&zs, Z_SYNC_FLUSH);
        size_t clen = cap - zs.avail_out;
        deflateEnd(&zs);
        if (rc != Z_OK || zs.avail_in != 0 || clen < 4 || memcmp(tmp + clen - 4, "\x00\x00\xff\xff", 4)) {
            free(tmp);
            return -1;
        }
        /* RFC 7692 7.2.1: drop the 00 00 ff ff tail of the sync flush. */
        build_frame(&g_dpool[wbits][i], 0x80 | 0x40 | OP_TEXT, tmp, clen - 4);
        free(tmp);
    }
    g_dpool_ready[wbits] = true;
    return 0;
}

static void build_keys(void) {
    for (int i = 0; i < NKEYS; i++) {
        uint8_t raw[16];
        random_bytes(raw, sizeof(raw));
        base64_encode(raw, sizeof(raw), g_keys[i]);
        ws_accept_for_key(g_keys[i], strlen(g_keys[i]), g_accepts[i]);
    }
}

/* ---------------------------------------------------------------- connections: output */

static void out_append(Conn *c, const void *data, size_t n) {
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) { /* compact before growing */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap * 2 : 4096;
            while (cap < c->out_len + n) cap *= 2;
            c->out = realloc(c->out, cap);
            if (!c->out) die("out of memory");
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

static int flush_out(Conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) return 0; /* EPOLLOUT (edge-triggered) calls us again */
            if (errno == EINTR) continue;
            return -1;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    return 0;
}

static void send_control(Conn *c, uint8_t op, const uint8_t *payload, size_t n) {
    uint8_t buf[14 + 125], key[4];
    uint64_t r = rng_next();
    memcpy(key, &r, 4);
    if (n > 125) n = 125;
    size_t h = ws_write_header(buf, 0x80 | op, n, key);
    ws_mask(buf + h, payload, n, key, 0);
    out_append(c, buf, h + n);
}

static void send_close(Conn *c, uint16_t code) {
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_control(c, OP_CLOSE, p, 2);
    c->close_sent = true;
}

/* ---------------------------------------------------------------- connections: lifecycle */

static void conn_free(Conn *c) {
    if (c->st == CS_FREE) return;
    if (c->st == CS_CONNECTING || c->st == CS_HANDSHAKE) g_pending--;
    if (c->st == CS_OPEN || c->st == CS_CLOSING) g_open--;
    if (c->fd >= 0) close(c->fd); /* also removes it from the epoll set */
    free(c->hbuf);
    free(c->out);
    if (c->inf) {
        inflateEnd(c->inf);
        free(c->inf);
    }
    free(c->inf_out);
    int id = c->id;
    const char *path = c->path;
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->id = id;
    c->path = path;
    c->st = CS_FREE;
}

static void fail_conn(Conn *c, const char *why) {
    if (g_phase != PH_STOP) note_error("conn %d: %s", c->id, why); /* not while winding down */
    conn_free(c);
}

static int open_conn(Conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note_error("socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (opt.src_addrs > 1) {
        /* Spread over 127.0.0.1..N; the port is picked at connect() time per 4-tuple. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7F000001u + (g_src_rr++ % (unsigned)opt.src_addrs));
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
            note_error("bind: %s", strerror(errno));
            close(fd);
            return -1;
        }
    }
    if (connect(fd, (struct sockaddr *)&g_addr, sizeof(g_addr)) < 0 && errno != EINPROGRESS) {
        note_error("connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->st = CS_CONNECTING;
    c->t_start = g_now;
    c->key_idx = (int)(rng_next() % NKEYS);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    g_pending++;
    return 0;
}

static int on_connected(Conn *c) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fail_conn(c, strerror(err));
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                     c->path, opt.host, opt.port, g_keys[c->key_idx],
                     opt.mode == M_DEFLATE
                         ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                         : "");
    out_append(c, req, (size_t)n);
    c->st = CS_HANDSHAKE;
    c->hbuf = xmalloc(HBUF_SIZE);
    c->hlen = 0;
    if (flush_out(c) < 0) {
        fail_conn(c, "write failed during handshake");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- mode hooks */

static PoolMsg *next_outgoing(Conn *c) {
    size_t i = c->sent % g_npool;
    return opt.mode == M_DEFLATE ? &g_dpool[c->client_wbits][i] : &g_pool[i];
}

static void enqueue_next(Conn *c) {
    if (g_phase == PH_STOP || c->st != CS_OPEN) return;
    PoolMsg *m = next_outgoing(c);
    size_t done = 0;
    if (m->frame_len >= 16384 && c->out_off == c->out_len) {
        /* Big frame, nothing queued: send it straight from the pool, saving a 64 KiB copy.
         * Errors surface at the next flush_out (we are inside the parser here). */
        ssize_t w = send(c->fd, m->frame, m->frame_len, MSG_NOSIGNAL);
        if (w > 0) done = (size_t)w;
    }
    if (done < m->frame_len) out_append(c, m->frame + done, m->frame_len - done);
    c->sent++;
    if (opt.mode == M_LATENCY) c->t_sent = now_s();
}

static void on_open(Conn *c) {
    switch (opt.mode) {
    case M_DEFLATE:
        if (!c->deflate) {
            note_error("server did not negotiate permessage-deflate");
            g_fatal = true;
            return;
        }
        /* fall through */
    case M_THROUGHPUT:
    case M_LATENCY:
        for (int i = 0; i < opt.inflight; i++) enqueue_next(c);
        break;
    case M_HANDSHAKES:
        send_close(c, 1000);
        c->st = CS_CLOSING;
        c->t_start = g_now;
        break;
    default:
        break;
    }
}

/* A chunk of a data message's payload arrived (at offset c->msg_off). */
static void on_data_chunk(Conn *c, const uint8_t *p, size_t n) {
    if (opt.mode == M_THROUGHPUT || opt.mode == M_LATENCY) {
        const PoolMsg *m = &g_pool[c->recvd % g_npool];
        uint64_t off = c->msg_off;
        if (off + n > m->len) {
            verify_error(c, "echo longer than the message sent");
            return;
        }
        if (m->len <= FULL_VERIFY_MAX) {
            if (memcmp(m->payload + off, p, n) != 0) verify_error(c, "payload differs");
            return;
        }
        /* Sampled check: every SAMPLE_STRIDE-th byte and the last byte of the message. */
        uint64_t first = (off + SAMPLE_STRIDE - 1) / SAMPLE_STRIDE * SAMPLE_STRIDE;
        for (uint64_t k = first; k < off + n; k += SAMPLE_STRIDE)
            if (p[k - off] != m->payload[k]) verify_error(c, "payload differs (sampled)");
        if (off + n == m->len && p[n - 1] != m->payload[m->len - 1]) verify_error(c, "last byte differs");
    } else if (opt.mode == M_DEFLATE) {
        if (!c->msg_rsv1) { /* the server may send a message uncompressed */
            if (c->inf_len + n > c->inf_cap) {
                verify_error(c, "echo longer than the message sent");
                return;
            }
            memcpy(c->inf_out + c->inf_len, p, n);
            c->inf_len += n;
            return;
        }
        c->inf->next_in = (uint8_t *)p;
        c->inf->avail_in = (uInt)n;
        c->inf->next_out = c->inf_out + c->inf_len;
        c->inf->avail_out = (uInt)(c->inf_cap - c->inf_len);
        int rc = inflate(c->inf, Z_SYNC_FLUSH);
        c->inf_len = c->inf_cap - c->inf->avail_out;
        if ((rc != Z_OK && rc != Z_BUF_ERROR) || c->inf->avail_in != 0)
            verify_error(c, "inflate failed or echo too long");
    } else if (opt.mode == M_FANOUT) {
        size_t take = c->small_len + n <= SMALL_MAX ? n : SMALL_MAX - c->small_len;
        memcpy(c->small + c->small_len, p, take);
        c->small_len += take;
    }
}

static void finish_pipeline_message(Conn *c, const PoolMsg *m) {
    c->recvd++;
    g_stats.msgs++;
    g_stats.payload_bytes += m->len;
    if (opt.mode == M_LATENCY && g_phase == PH_MEASURE && g_nlat < MAX_LAT_SAMPLES)
        g_lat[g_nlat++] = (float)((now_s() - c->t_sent) * 1e6);
    enqueue_next(c);
}

static void on_message_end(Conn *c) {
    if (opt.mode == M_THROUGHPUT || opt.mode == M_LATENCY) {
        const PoolMsg *m = &g_pool[c->recvd % g_npool];
        uint8_t want = use_binary() ? OP_BINARY : OP_TEXT;
        if (c->msg_op != want) verify_error(c, "wrong opcode");
        if (c->msg_off != m->len) verify_error(c, "wrong length");
        finish_pipeline_message(c, m);
    } else if (opt.mode == M_DEFLATE) {
        const PoolMsg *m = &g_pool[c->recvd % g_npool];
        if (c->msg_rsv1) { /* RFC 7692 7.2.2: append 00 00 ff ff and inflate to the end */
            static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
            on_data_chunk(c, tail, 4);
        }
        if (c->msg_op != OP_TEXT) verify_error(c, "wrong opcode");
        if (c->inf_len != m->len || memcmp(c->inf_out, m->payload, m->len) != 0)
            verify_error(c, "inflated echo differs");
        c->inf_len = 0;
        finish_pipeline_message(c, m);
    } else if (opt.mode == M_FANOUT) {
        unsigned r = 0;
        c->small[c->small_len < SMALL_MAX ? c->small_len : SMALL_MAX - 1] = 0;
        if (c->id == opt.conns) { /* the trigger connection: the server need not send it anything */
        } else if (sscanf((char *)c->small, "round %u", &r) != 1) {
            verify_error(c, "unexpected fan-out message");
        } else if (r == g_round && c->fan_round != r) {
            c->fan_round = r;
            g_round_count++;
            double t = now_s();
            if (g_round_count == 1) g_round_first = t;
            if (g_round_count == (uint32_t)opt.conns) g_round_last = t;
        }
        c->small_len = 0;
    }
}

static void on_control(Conn *c, uint8_t op, const uint8_t *p, size_t n) {
    if (op == OP_PING) {
        send_control(c, OP_PONG, p, n);
    } else if (op == OP_CLOSE) {
        c->close_recv = true;
        if (!c->close_sent) {
            if (g_phase != PH_STOP) note_error("conn %d: server sent a close frame", c->id);
            send_close(c, n >= 2 ? (uint16_t)(p[0] << 8 | p[1]) : 1000);
        }
        c->st = CS_CLOSING;
    }
}

/* ---------------------------------------------------------------- frame parser */

static size_t header_need(const Conn *c) {
    if (c->fh_len < 2) return 2;
    uint8_t l7 = c->fh[1] & 0x7F;
    return 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->fh[1] & 0x80) ? 4 : 0);
}

/* Decode a complete header; returns -1 on a protocol error. */
static int start_frame(Conn *c) {
    uint8_t b0 = c->fh[0], b1 = c->fh[1];
    if (b1 & 0x80) return fail_conn(c, "server frame is masked"), -1;
    if (b0 & 0x30) return fail_conn(c, "RSV2/RSV3 set"), -1;
    uint64_t len = b1 & 0x7F;
    if (len == 126) len = (uint64_t)c->fh[2] << 8 | c->fh[3];
    else if (len == 127)
        for (int i = 0; i < 8; i++) len = len << 8 | c->fh[2 + i];
    c->fop = b0 & 0x0F;
    c->ffin = b0 & 0x80;
    c->frsv1 = b0 & 0x40;
    c->pay_left = len;
    c->in_payload = true;
    if (c->fop >= 0x8) {
        if (len > 125 || !c->ffin || c->frsv1) return fail_conn(c, "bad control frame"), -1;
        c->ctrl_len = 0;
        return 0;
    }
    if (c->fop == OP_CONT) {
        if (!c->in_msg) return fail_conn(c, "unexpected continuation frame"), -1;
    } else {
        if (c->in_msg) return fail_conn(c, "new message inside a fragmented one"), -1;
        if (c->frsv1 && !c->deflate) return fail_conn(c, "RSV1 without permessage-deflate"), -1;
        c->in_msg = true;
        c->msg_op = c->fop;
        c->msg_rsv1 = c->frsv1;
        c->msg_off = 0;
    }
    return 0;
}

static void end_frame(Conn *c) {
    c->in_payload = false;
    c->fh_len = 0;
    if (c->fop >= 0x8) {
        on_control(c, c->fop, c->ctrl, c->ctrl_len);
    } else if (c->ffin) {
        c->in_msg = false;
        on_message_end(c);
    }
}

static int parse_frames(Conn *c, const uint8_t *p, size_t n) {
    while (n > 0 && c->st != CS_FREE) {
        if (!c->in_payload) {
            size_t need = header_need(c);
            while ((size_t)c->fh_len < need && n > 0) {
                c->fh[c->fh_len++] = *p++;
                n--;
                need = header_need(c);
            }
            if ((size_t)c->fh_len < need) return 0;
            if (start_frame(c) < 0) return -1;
            if (c->pay_left == 0) end_frame(c);
            continue;
        }
        size_t take = n < c->pay_left ? n : (size_t)c->pay_left;
        if (c->fop >= 0x8) {
            memcpy(c->ctrl + c->ctrl_len, p, take);
            c->ctrl_len += take;
        } else {
            on_data_chunk(c, p, take);
            c->msg_off += take;
        }
        p += take;
        n -= take;
        c->pay_left -= take;
        if (c->pay_left == 0) end_frame(c);
    }
    return c->st == CS_FREE ? -1 : 0;
}

/* ---------------------------------------------------------------- handshake response */

static void trim(char **s, char **e) {
    while (*s < *e && (**s == ' ' || **s == '\t')) (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t')) (*e)--;
}

/* Reads Sec-WebSocket-Extensions; returns -1 if it asks for something we did not offer. */
static int parse_extensions(Conn *c, char *v) {
    if (!strcasestr(v, "permessage-deflate")) return -1;
    if (opt.mode != M_DEFLATE) return -1;
    c->deflate = true;
    c->client_wbits = 15;
    char *w = strcasestr(v, "client_max_window_bits");
    if (w && (w = strchr(w, '=')) != NULL) {
        w++;
        while (*w == ' ' || *w == '"') w++;
        c->client_wbits = atoi(w);
    }
    if (build_deflate_pool(c->client_wbits) < 0) return -1;
    g_deflate_wbits = c->client_wbits;
    c->inf = xmalloc(sizeof(z_stream));
    memset(c->inf, 0, sizeof(z_stream));
    if (inflateInit2(c->inf, -15) != Z_OK) return -1;
    c->inf_cap = opt.size + 64;
    c->inf_out = xmalloc(c->inf_cap);
    return 0;
}

static int check_response(Conn *c, char *resp) {
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(resp, "\r\n");
        if (eol) *eol = 0;
        note_error("conn %d: handshake refused: %.80s", c->id, resp);
        return -1;
    }
    bool accept_ok = false;
    char *line = strstr(resp, "\r\n") + 2;
    while (*line) {
        char *eol = strstr(line, "\r\n");
        if (!eol) break;
        *eol = 0;
        char *colon = strchr(line, ':');
        if (colon) {
            char *ns = line, *ne = colon, *vs = colon + 1, *ve = eol;
            trim(&ns, &ne);
            trim(&vs, &ve);
            *ve = 0;
            size_t nl = (size_t)(ne - ns);
            if (nl == 20 && strncasecmp(ns, "Sec-WebSocket-Accept", nl) == 0)
                accept_ok = strcmp(vs, g_accepts[c->key_idx]) == 0;
            else if (nl == 24 && strncasecmp(ns, "Sec-WebSocket-Extensions", nl) == 0 &&
                     parse_extensions(c, vs) < 0) {
                note_error("conn %d: unusable extension response: %.80s", c->id, vs);
                return -1;
            }
        }
        line = eol + 2;
    }
    if (!accept_ok) {
        note_error("conn %d: missing or wrong Sec-WebSocket-Accept", c->id);
        return -1;
    }
    return 0;
}

/* Bytes while CS_HANDSHAKE: collect up to the blank line, check, then parse any leftover frames. */
static int feed_handshake(Conn *c, const uint8_t *p, size_t n) {
    size_t room = HBUF_SIZE - 1 - c->hlen;
    size_t take = n < room ? n : room;
    size_t scan_from = c->hlen >= 3 ? c->hlen - 3 : 0;
    memcpy(c->hbuf + c->hlen, p, take);
    c->hlen += take;
    c->hbuf[c->hlen] = 0;
    char *end = strstr(c->hbuf + scan_from, "\r\n\r\n");
    if (!end) {
        if (c->hlen >= HBUF_SIZE - 1) return fail_conn(c, "handshake response too large"), -1;
        return 0;
    }
    size_t hdr_len = (size_t)(end - c->hbuf) + 4;
    size_t extra_in_hbuf = c->hlen - hdr_len;
    end[2] = 0; /* keep the last header's CRLF, cut the blank line */
    if (check_response(c, c->hbuf) < 0) {
        conn_free(c);
        return -1;
    }
    g_stats.handshakes++;
    c->st = CS_OPEN;
    g_pending--;
    g_open++;
    on_open(c);
    /* Leftover bytes (frames sent right after the 101) go to the frame parser. */
    uint8_t extra[HBUF_SIZE];
    memcpy(extra, c->hbuf + hdr_len, extra_in_hbuf);
    free(c->hbuf);
    c->hbuf = NULL;
    if (extra_in_hbuf && parse_frames(c, extra, extra_in_hbuf) < 0) return -1;
    if (take < n && parse_frames(c, p + take, n - take) < 0) return -1;
    return 0;
}

/* ---------------------------------------------------------------- event handling */

static void on_eof(Conn *c) {
    if (opt.mode == M_HANDSHAKES && c->close_recv) {
        g_stats.cycles++; /* the server closed TCP after the close handshake, as RFC 6455 asks */
        conn_free(c);
    } else if (g_phase == PH_STOP) {
        conn_free(c);
    } else {
        fail_conn(c, c->st == CS_HANDSHAKE ? "connection closed during handshake" : "unexpected EOF");
    }
}

static int do_read(Conn *c, bool hangup) {
    /* Edge-triggered: read until the socket is drained. A short read means it was (data that
     * arrives later raises a new edge), which saves the extra read that would return EAGAIN;
     * but if the event already carried a hang-up, read on until the EOF itself. */
    for (;;) {
        ssize_t r = read(c->fd, g_rbuf, RBUF_SIZE);
        if (r > 0) {
            g_stats.rx_bytes += (uint64_t)r;
            int rc = c->st == CS_HANDSHAKE ? feed_handshake(c, g_rbuf, (size_t)r)
                                           : parse_frames(c, g_rbuf, (size_t)r);
            if (rc < 0 || c->st == CS_FREE) return -1;
            if ((size_t)r < RBUF_SIZE && !hangup) break;
            continue;
        }
        if (r == 0) {
            on_eof(c);
            return -1;
        }
        if (errno == EAGAIN) break;
        if (errno == EINTR) continue;
        fail_conn(c, strerror(errno));
        return -1;
    }
    /* One write per read batch. */
    if (c->out_len > c->out_off && flush_out(c) < 0) {
        fail_conn(c, "write failed");
        return -1;
    }
    return 0;
}

static void handle_event(Conn *c, uint32_t ev) {
    if (c->st == CS_FREE) return; /* freed earlier in this batch */
    if (c->st == CS_CONNECTING) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        if (on_connected(c) < 0) return;
    }
    bool hangup = ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
    if ((ev & EPOLLIN || hangup) && do_read(c, hangup) < 0) return;
    if ((ev & EPOLLOUT) && flush_out(c) < 0) fail_conn(c, "write failed");
}

static bool g_stdin_ready;

static void poll_once(int timeout_ms) {
    static struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(g_ep, evs, MAX_EVENTS, timeout_ms);
    g_now = now_s();
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr == &g_stdin_marker) {
            g_stdin_ready = true;
            continue;
        }
        handle_event(evs[i].data.ptr, evs[i].events);
    }
}

/* Open more connections (up to connect_concurrency at a time) and time out stuck ones. */
static void service_connections(int total) {
    while (g_pending < opt.connect_concurrency && g_next_open < total) {
        Conn *c = &g_conns[g_next_open++];
        if (open_conn(c) < 0) g_fatal = true;
    }
    static double last_scan;
    if (g_now - last_scan < 0.1) return;
    last_scan = g_now;
    for (int i = 0; i < g_nconns; i++) {
        Conn *c = &g_conns[i];
        bool timed = c->st == CS_CONNECTING || c->st == CS_HANDSHAKE ||
                     (c->st == CS_CLOSING && opt.mode == M_HANDSHAKES);
        if (timed && g_now - c->t_start > opt.timeout) fail_conn(c, "timed out opening or closing");
    }
}

static void alloc_conns(int n, const char *path) {
    g_nconns = n;
    g_conns = calloc((size_t)n, sizeof(Conn));
    if (!g_conns) die("out of memory");
    for (int i = 0; i < n; i++) {
        g_conns[i].fd = -1;
        g_conns[i].id = i;
        g_conns[i].path = path;
    }
}

/* Opens all g_nconns connections; false if they did not all open within the deadline. */
static bool open_all(double deadline_s) {
    double deadline = now_s() + deadline_s;
    g_now = now_s();
    while (g_open < g_nconns && !g_fatal && g_now < deadline) {
        service_connections(g_nconns);
        poll_once(5);
        if (g_open + g_pending < g_nconns && g_next_open >= g_nconns) break; /* some failed */
    }
    return g_open == g_nconns && !g_fatal;
}

/* Close handshake on every open connection (so servers don't log aborted connections), wait at
 * most a second for the servers to close TCP, then drop whatever is left. */
static bool all_echoed(void) {
    for (int i = 0; i < g_nconns; i++)
        if (g_conns[i].st == CS_OPEN && g_conns[i].recvd < g_conns[i].sent) return false;
    return true;
}

static void close_all(void) {
    g_phase = PH_STOP; /* no new messages from here on */
    double drain_end = now_s() + 1.0;
    while (!all_echoed() && g_now < drain_end) poll_once(5); /* let in-flight echoes arrive */
    for (int i = 0; i < g_nconns; i++) {
        Conn *c = &g_conns[i];
        if (c->st == CS_OPEN) {
            if (!c->close_sent) send_close(c, 1000);
            c->st = CS_CLOSING;
            if (flush_out(c) < 0) conn_free(c);
        } else if (c->st != CS_CLOSING) {
            conn_free(c);
        }
    }
    double deadline = now_s() + 1.0;
    while (g_open > 0 && g_now < deadline) poll_once(5);
    for (int i = 0; i < g_nconns; i++) conn_free(&g_conns[i]);
}

/* ---------------------------------------------------------------- JSON output */

static bool g_json_first = true;

static void jkey(const char *k) {
    printf("%s\"%s\":", g_json_first ? "{" : ",", k);
    g_json_first = false;
}
static void jnum(const char *k, double v) {
    jkey(k);
    if (isfinite(v)) printf("%.10g", v);
    else printf("null");
}
static void jint(const char *k, long long v) { jkey(k), printf("%lld", v); }
static void jbool(const char *k, bool v) { jkey(k), printf(v ? "true" : "false"); }
static void jstr(const char *k, const char *v) {
    jkey(k);
    putchar('"');
    for (const char *s = v; *s; s++) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            printf("\\u%04x", (unsigned char)*s); /* keeps the output ASCII and valid JSON */
        else putchar(*s);
    }
    putchar('"');
}

static void json_common(double cpu_s, double wall_s, double server_cpu_s) {
    jstr("mode", opt.mode_name);
    jbool("ok", g_errors == 0 && !g_fatal);
    jint("errors", (long long)g_errors);
    jint("verify_errors", (long long)g_verify_errors);
    jstr("first_error", g_first_error);
    jnum("loadgen_cpu_s", cpu_s);
    jnum("loadgen_cpu_percent", wall_s > 0 ? 100.0 * cpu_s / wall_s : NAN);
    if (opt.server_pid > 0) jnum("server_cpu_percent", wall_s > 0 ? 100.0 * server_cpu_s / wall_s : NAN);
}

/* ---------------------------------------------------------------- modes */

typedef struct {
    double t;
    struct rusage ru;
    Stats st;
    double server_cpu;
} Snapshot;

/* utime + stime of the server process, from /proc/PID/stat (NAN if unknown). */
static double server_cpu_seconds(void) {
    if (opt.server_pid <= 0) return NAN;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    unsigned long utime = 0, stime = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return NAN;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static void snap(Snapshot *s) {
    s->t = now_s();
    getrusage(RUSAGE_SELF, &s->ru);
    s->st = g_stats;
    s->server_cpu = server_cpu_seconds();
}

/* Run until the measurement window is over: warm-up, then `duration` seconds measured. */
static void run_timed(Snapshot *a, Snapshot *b, int total, bool reopen) {
    double t0 = now_s();
    g_now = t0;
    double hard_stop = t0 + opt.warmup + opt.duration + 30.0;
    while (!g_fatal && g_now < hard_stop) {
        if (reopen) {
            /* handshakes: a finished slot starts over right away */
            for (int i = 0; i < g_nconns && g_phase != PH_STOP; i++)
                if (g_conns[i].st == CS_FREE && open_conn(&g_conns[i]) < 0) g_fatal = true;
        }
        service_connections(total);
        poll_once(5);
        if (g_phase == PH_RUN && g_now - t0 >= opt.warmup) {
            snap(a);
            g_phase = PH_MEASURE;
        } else if (g_phase == PH_MEASURE && g_now - a->t >= opt.duration) {
            snap(b);
            g_phase = PH_STOP;
            break;
        }
        if (!reopen && g_open + g_pending == 0 && g_next_open >= total) {
            note_error("all connections closed");
            break;
        }
    }
    if (g_phase != PH_STOP) {
        if (g_phase == PH_RUN) snap(a);
        snap(b);
        if (!g_fatal) note_error("run did not finish in time");
    }
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double percentile_f(const float *v, size_t n, double q) {
    if (n == 0) return NAN;
    size_t i = (size_t)ceil(q * (double)n);
    return v[i == 0 ? 0 : (i > n ? n - 1 : i - 1)];
}

static int mode_pipeline(void) {
    if (opt.mode == M_LATENCY) g_lat = xmalloc(MAX_LAT_SAMPLES * sizeof(float));
    alloc_conns(opt.conns, opt.path);
    if (!open_all(opt.timeout)) note_error("only %d of %d connections opened", g_open, g_nconns);
    Snapshot a = {0}, b = {0};
    if (!g_fatal && g_open == g_nconns) run_timed(&a, &b, g_nconns, false);
    else {
        snap(&a);
        b = a;
    }
    close_all();
    double wall = b.t - a.t, cpu = cpu_seconds(&b.ru) - cpu_seconds(&a.ru);
    double msgs = (double)(b.st.msgs - a.st.msgs);
    if (msgs == 0) note_error("no echo received in the measured window");
    json_common(cpu, wall, b.server_cpu - a.server_cpu);
    jint("conns", opt.conns);
    jint("inflight", opt.inflight);
    jint("size", (long long)opt.size);
    jbool("binary", opt.mode != M_DEFLATE && use_binary());
    jnum("duration_s", wall);
    jint("messages", (long long)msgs);
    jnum("msg_per_s", wall > 0 ? msgs / wall : NAN);
    jnum("mb_per_s", wall > 0 ? (double)(b.st.payload_bytes - a.st.payload_bytes) / wall / 1e6 : NAN);
    jnum("wire_rx_mb_per_s", wall > 0 ? (double)(b.st.rx_bytes - a.st.rx_bytes) / wall / 1e6 : NAN);
    if (opt.mode == M_LATENCY) {
        qsort(g_lat, g_nlat, sizeof(float), cmp_float);
        jint("samples", (long long)g_nlat);
        jnum("p50_us", percentile_f(g_lat, g_nlat, 0.50));
        jnum("p99_us", percentile_f(g_lat, g_nlat, 0.99));
        jnum("p999_us", percentile_f(g_lat, g_nlat, 0.999));
        jnum("max_us", g_nlat ? g_lat[g_nlat - 1] : NAN);
    }
    if (opt.mode == M_DEFLATE && g_deflate_wbits) {
        size_t sent_wire = 0;
        for (size_t i = 0; i < g_npool; i++) sent_wire += g_dpool[g_deflate_wbits][i].frame_len;
        jint("client_max_window_bits", g_deflate_wbits);
        jnum("client_compression_ratio", (double)sent_wire / (double)(g_npool * opt.size));
    }
    return 0;
}

static int mode_handshakes(void) {
    alloc_conns(opt.concurrency, opt.path);
    Snapshot a = {0}, b = {0};
    g_next_open = g_nconns; /* run_timed's reopen loop does the opening */
    run_timed(&a, &b, g_nconns, true);
    close_all();
    double wall = b.t - a.t, cpu = cpu_seconds(&b.ru) - cpu_seconds(&a.ru);
    double cycles = (double)(b.st.cycles - a.st.cycles);
    if (cycles == 0) note_error("no handshake completed in the measured window");
    json_common(cpu, wall, b.server_cpu - a.server_cpu);
    jint("concurrency", opt.concurrency);
    jnum("duration_s", wall);
    jint("handshakes", (long long)cycles);
    jnum("handshakes_per_s", wall > 0 ? cycles / wall : NAN);
    jnum("upgrades_per_s", wall > 0 ? (double)(b.st.handshakes - a.st.handshakes) / wall : NAN);
    return 0;
}

static int mode_idle(void) {
    alloc_conns(opt.conns, opt.path);
    Snapshot a, b;
    snap(&a);
    bool ok = open_all(opt.timeout + opt.conns / 500.0);
    double open_s = now_s() - a.t;
    if (!ok) note_error("only %d of %d connections opened", g_open, g_nconns);
    fprintf(stderr, "READY %d\n", g_open);
    fflush(stderr);
    /* Hold until the runner writes a line / closes stdin, or --hold seconds pass. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLHUP, .data.ptr = &g_stdin_marker};
    bool have_stdin = epoll_ctl(g_ep, EPOLL_CTL_ADD, 0, &ev) == 0;
    double until = now_s() + opt.hold;
    while (g_now < until && !(have_stdin && g_stdin_ready)) poll_once(20);
    int still_open = g_open;
    snap(&b);
    close_all();
    json_common(cpu_seconds(&b.ru) - cpu_seconds(&a.ru), b.t - a.t, b.server_cpu - a.server_cpu);
    jint("conns", opt.conns);
    jint("opened", still_open);
    jnum("open_s", open_s);
    return 0;
}

static int mode_fanout(void) {
    alloc_conns(opt.conns + 1, opt.fanout_path);
    Conn *trigger = &g_conns[opt.conns];
    trigger->path = opt.trigger_path;
    Snapshot a, b;
    double t_open = now_s();
    bool ok = open_all(opt.timeout + opt.conns / 500.0);
    double open_s = now_s() - t_open;
    snap(&a); /* CPU use is reported for the rounds only */
    int total_rounds = opt.warmup_rounds + opt.rounds;
    float *last = xmalloc(sizeof(float) * (size_t)(total_rounds + 1));
    float *first = xmalloc(sizeof(float) * (size_t)(total_rounds + 1));
    size_t nres = 0;
    int incomplete = 0;
    if (!ok) note_error("only %d of %d connections opened", g_open, g_nconns);
    for (int r = 1; ok && r <= total_rounds && !g_fatal && trigger->st == CS_OPEN; r++) {
        if (g_open < g_nconns) { /* a receiver is gone: no round can complete */
            note_error("round %d: %d of %d connections are still open", r, g_open, g_nconns);
            break;
        }
        g_round = (uint32_t)r;
        g_round_count = 0;
        char msg[SMALL_MAX];
        size_t len = opt.size < 16 ? 16 : (opt.size > SMALL_MAX - 1 ? SMALL_MAX - 1 : opt.size);
        int h = snprintf(msg, sizeof(msg), "round %u ", g_round);
        memset(msg + h, 'x', len - (size_t)h);
        double t0 = now_s();
        PoolMsg m;
        build_frame(&m, 0x80 | OP_TEXT, (uint8_t *)msg, len);
        out_append(trigger, m.frame, m.frame_len);
        free(m.frame);
        if (flush_out(trigger) < 0) fail_conn(trigger, "write failed");
        g_now = now_s();
        while (g_round_count < (uint32_t)opt.conns && g_now - t0 < opt.timeout && !g_fatal) poll_once(5);
        if (g_round_count < (uint32_t)opt.conns) {
            incomplete++;
            note_error("round %d: only %u of %d connections received the broadcast", r, g_round_count,
                       opt.conns);
        } else if (r > opt.warmup_rounds) {
            last[nres] = (float)((g_round_last - t0) * 1e3);
            first[nres] = (float)((g_round_first - t0) * 1e3);
            nres++;
        }
        double gap_end = now_s() + 0.05; /* let the server settle between rounds */
        while (g_now < gap_end) poll_once(5);
    }
    snap(&b);
    close_all();
    qsort(last, nres, sizeof(float), cmp_float);
    qsort(first, nres, sizeof(float), cmp_float);
    json_common(cpu_seconds(&b.ru) - cpu_seconds(&a.ru), b.t - a.t, b.server_cpu - a.server_cpu);
    jint("conns", opt.conns);
    jnum("open_s", open_s);
    jint("rounds", (long long)nres);
    jint("incomplete_rounds", incomplete);
    jnum("p50_ms", percentile_f(last, nres, 0.50));
    jnum("p99_ms", percentile_f(last, nres, 0.99));
    jnum("max_ms", nres ? last[nres - 1] : NAN);
    jnum("first_p50_ms", percentile_f(first, nres, 0.50));
    return 0;
}

/* ---------------------------------------------------------------- options */

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --mode MODE --port P [options]\n"
            "modes: throughput latency handshakes idle deflate fanout\n"
            "  --host H              server address, loopback only (127.0.0.1)\n"
            "  --path P              request path (/)\n"
            "  --conns N             connections (throughput 1, idle 5000, fanout 10000, deflate 10)\n"
            "  --inflight K          messages in flight per connection (100; deflate 10)\n"
            "  --size S              payload bytes (32; deflate 1024)\n"
            "  --binary | --text     message type (default: binary above 16 KiB)\n"
            "  --duration T          measured seconds (5)   --warmup W   seconds before (1)\n"
            "  --concurrency N       handshakes in progress at once (32)\n"
            "  --connect-concurrency N  connections being opened at once (64)\n"
            "  --rounds R            fan-out rounds measured (20)   --warmup-rounds R (2)\n"
            "  --fanout-path P --trigger-path P   (/fanout, /trigger)\n"
            "  --src-addrs N         spread client sockets over 127.0.0.1..N (4)\n"
            "  --hold S              idle: longest hold before closing (30); stdin EOF/line ends it\n"
            "  --timeout S           per-connection open/close timeout (10)\n"
            "  --server-pid PID      also report that process's CPU use over the same window\n");
    exit(2);
}

static Mode parse_mode(const char *s) {
    static const char *names[] = {"throughput", "latency", "handshakes", "idle", "deflate", "fanout"};
    for (int i = 0; i < 6; i++)
        if (strcmp(s, names[i]) == 0) return (Mode)i;
    usage();
    return M_THROUGHPUT;
}

static void set_defaults(void) {
    bool conns_set = opt.conns > 0, inflight_set = opt.inflight > 0, size_set = opt.size > 0;
    switch (opt.mode) {
    case M_THROUGHPUT: if (!conns_set) opt.conns = 1; if (!inflight_set) opt.inflight = 100; break;
    case M_LATENCY: opt.conns = 1; opt.inflight = 1; break;
    case M_IDLE: if (!conns_set) opt.conns = 5000; break;
    case M_DEFLATE:
        if (!conns_set) opt.conns = 10;
        if (!inflight_set) opt.inflight = 10;
        if (!size_set) opt.size = 1024;
        break;
    case M_FANOUT: if (!conns_set) opt.conns = 10000; break;
    case M_HANDSHAKES: break;
    }
    if (!opt.size) opt.size = 32;
    if (!opt.conns) opt.conns = 1;
    if (!opt.inflight) opt.inflight = 1;
}

static void parse_args(int argc, char **argv) {
    opt = (Options){.host = "127.0.0.1", .path = "/", .fanout_path = "/fanout",
                    .trigger_path = "/trigger", .binary = -1, .duration = 5, .warmup = 1,
                    .concurrency = 32, .connect_concurrency = 64, .rounds = 20, .warmup_rounds = 2,
                    .src_addrs = 4, .hold = 30, .timeout = 10};
    enum { O_MODE = 1000, O_HOST, O_PORT, O_PATH, O_CONNS, O_INFLIGHT, O_SIZE, O_BINARY, O_TEXT,
           O_DURATION, O_WARMUP, O_CONC, O_CCONC, O_ROUNDS, O_WROUNDS, O_FPATH, O_TPATH, O_SRC,
           O_HOLD, O_TIMEOUT, O_SERVER_PID };
    static struct option longopts[] = {
        {"mode", 1, 0, O_MODE}, {"host", 1, 0, O_HOST}, {"port", 1, 0, O_PORT},
        {"path", 1, 0, O_PATH}, {"conns", 1, 0, O_CONNS}, {"inflight", 1, 0, O_INFLIGHT},
        {"size", 1, 0, O_SIZE}, {"binary", 0, 0, O_BINARY}, {"text", 0, 0, O_TEXT},
        {"duration", 1, 0, O_DURATION}, {"warmup", 1, 0, O_WARMUP}, {"concurrency", 1, 0, O_CONC},
        {"connect-concurrency", 1, 0, O_CCONC}, {"rounds", 1, 0, O_ROUNDS},
        {"warmup-rounds", 1, 0, O_WROUNDS}, {"fanout-path", 1, 0, O_FPATH},
        {"trigger-path", 1, 0, O_TPATH}, {"src-addrs", 1, 0, O_SRC}, {"hold", 1, 0, O_HOLD},
        {"timeout", 1, 0, O_TIMEOUT}, {"server-pid", 1, 0, O_SERVER_PID}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case O_MODE: opt.mode = parse_mode(optarg), opt.mode_name = optarg; break;
        case O_HOST: opt.host = optarg; break;
        case O_PORT: opt.port = atoi(optarg); break;
        case O_PATH: opt.path = optarg; break;
        case O_CONNS: opt.conns = atoi(optarg); break;
        case O_INFLIGHT: opt.inflight = atoi(optarg); break;
        case O_SIZE: opt.size = (size_t)atol(optarg); break;
        case O_BINARY: opt.binary = 1; break;
        case O_TEXT: opt.binary = 0; break;
        case O_DURATION: opt.duration = atof(optarg); break;
        case O_WARMUP: opt.warmup = atof(optarg); break;
        case O_CONC: opt.concurrency = atoi(optarg); break;
        case O_CCONC: opt.connect_concurrency = atoi(optarg); break;
        case O_ROUNDS: opt.rounds = atoi(optarg); break;
        case O_WROUNDS: opt.warmup_rounds = atoi(optarg); break;
        case O_FPATH: opt.fanout_path = optarg; break;
        case O_TPATH: opt.trigger_path = optarg; break;
        case O_SRC: opt.src_addrs = atoi(optarg); break;
        case O_HOLD: opt.hold = atof(optarg); break;
        case O_TIMEOUT: opt.timeout = atof(optarg); break;
        case O_SERVER_PID: opt.server_pid = atoi(optarg); break;
        default: usage();
        }
    }
    if (!opt.mode_name || opt.port <= 0 || opt.port > 65535) usage();
    set_defaults();
    if (opt.src_addrs < 1 || opt.src_addrs > 250) die("--src-addrs must be 1..250");
    if (opt.duration <= 0 || opt.duration > 3600 || opt.rounds < 1 || opt.rounds > 100000) usage();
    if (opt.size > (64u << 20)) die("--size too large");
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &g_addr.sin_addr) != 1) die("--host must be an IPv4 address");
    if ((ntohl(g_addr.sin_addr.s_addr) >> 24) != 127) die("only loopback (127.0.0.0/8) targets");
}

static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)(opt.mode == M_HANDSHAKES ? opt.concurrency : opt.conns) + 64;
    if (rl.rlim_cur < want) {
        fprintf(stderr, "loadgen: fd limit %lu is below the %lu needed\n", (unsigned long)rl.rlim_cur,
                (unsigned long)want);
        exit(2);
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    g_rng ^= (uint64_t)getpid() << 17 ^ (uint64_t)(now_s() * 1e9);
    g_rbuf = xmalloc(RBUF_SIZE);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) die("epoll_create1");
    build_keys();
    build_pool();
    switch (opt.mode) {
    case M_THROUGHPUT:
    case M_LATENCY:
    case M_DEFLATE: mode_pipeline(); break;
    case M_HANDSHAKES: mode_handshakes(); break;
    case M_IDLE: mode_idle(); break;
    case M_FANOUT: mode_fanout(); break;
    }
    printf("}\n");
    fflush(stdout);
    return 0;
}
