/*
 * Small helpers shared by the C load generator and the C echo server:
 * SHA-1 and base64, just enough to compute Sec-WebSocket-Accept (RFC 6455 section 4.2.2),
 * plus the WebSocket frame header writer.
 *
 * Header-only on purpose: both programs are single translation units built with one gcc call.
 */
#ifndef PULSEWIRE_BENCH_WS_UTIL_H
#define PULSEWIRE_BENCH_WS_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static inline uint32_t sha1_rol(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

/* One 64-byte block of SHA-1 (FIPS 180-4). */
static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = sha1_rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        uint32_t t = sha1_rol(a, 5) + f + e + k + w[i];
        e = d; d = c; c = sha1_rol(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

/* SHA-1 of a short message (the handshake input is ~60 bytes). */
static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t full = len / 64 * 64;
    for (size_t i = 0; i < full; i += 64) sha1_block(h, msg + i);
    uint8_t tail[128] = {0};
    size_t rest = len - full;
    memcpy(tail, msg + full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64) sha1_block(h, tail + i);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24); out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8); out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* Standard base64 with padding; `out` needs 4 * ceil(len / 3) + 1 bytes. Returns the length. */
static size_t base64_encode(const uint8_t *in, size_t len, char *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len) v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (out: 29 bytes incl. NUL). */
static void ws_accept_for_key(const char *key, size_t key_len, char out[29]) {
    uint8_t buf[128], digest[20];
    if (key_len > sizeof(buf) - sizeof(WS_GUID)) key_len = sizeof(buf) - sizeof(WS_GUID);
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, WS_GUID, sizeof(WS_GUID) - 1);
    sha1(buf, key_len + sizeof(WS_GUID) - 1, digest);
    base64_encode(digest, 20, out);
}

/*
 * Write a frame header into dst (at least 14 bytes). first_byte is FIN|RSV|opcode.
 * If mask is non-NULL the MASK bit is set and the 4 key bytes follow. Returns the header length.
 */
static size_t ws_write_header(uint8_t *dst, uint8_t first_byte, uint64_t len, const uint8_t *mask) {
    size_t h = 0;
    uint8_t mbit = mask ? 0x80 : 0;
    dst[h++] = first_byte;
    if (len < 126) {
        dst[h++] = mbit | (uint8_t)len;
    } else if (len < 65536) {
        dst[h++] = mbit | 126;
        dst[h++] = (uint8_t)(len >> 8);
        dst[h++] = (uint8_t)len;
    } else {
        dst[h++] = mbit | 127;
        for (int i = 7; i >= 0; i--) dst[h++] = (uint8_t)(len >> (8 * i));
    }
    if (mask) {
        memcpy(dst + h, mask, 4);
        h += 4;
    }
    return h;
}

/* XOR `len` bytes with the 4-byte key, starting at key phase `phase` (0..3). Word at a time. */
static void ws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t key[4], size_t phase) {
    size_t i = 0;
    /* Align the key to the phase, then process 8 bytes at a time. */
    uint8_t k8[8];
    for (int j = 0; j < 8; j++) k8[j] = key[(phase + j) & 3];
    uint64_t k;
    memcpy(&k, k8, 8);
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k;
        memcpy(dst + i, &v, 8);
    }
    for (; i < len; i++) dst[i] = src[i] ^ key[(phase + i) & 3];
}

#endif
