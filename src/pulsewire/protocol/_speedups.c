/*
 * Optional C accelerator for pulsewire.protocol (the pure-Python path stays complete and is
 * selected with PULSEWIRE_NO_EXTENSIONS=1 or when this module could not be built).
 *
 * Three functions, chosen by profiling the echo benchmark:
 *   apply_mask(data, mask)                 XOR with a 4-byte key (SSE2/AVX2 on x86-64)
 *   build_frame(first_byte, payload, mask) header + (masked) payload in one allocation
 *   scan_messages(data, pos, end, client, max_size, events, in_place) -> pos
 *       the receive fast path: for every complete, unfragmented, uncompressed data frame
 *       in data[pos:end], append the message (str for text, bytes for binary) to `events`.
 *       With in_place, `data` (the connection's read buffer) is unmasked in place for text
 *       (decoded from there, no scratch copy); binary payloads are unmasked while copied
 *       into their bytes object, one pass either way.
 *       It stops, without raising, at the first frame it does not handle (control frame,
 *       fragment, RSV bits, bad mask bit, too large, invalid UTF-8, incomplete): the Python
 *       parser then takes over from the returned position and raises the proper errors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* XOR with the key repeated, 8 bytes at a time; on x86-64, 16 (SSE2, always there) or 32
 * (AVX2, when the CPU has it: checked once at import) at a time for the bulk. A vector is a
 * whole number of keys, so the key's phase is the same at every vector's start. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PW_X86 1
static int have_avx2 = 0;

__attribute__((target("avx2"))) static Py_ssize_t
xor_avx2(const unsigned char *src, unsigned char *dst, Py_ssize_t n, uint32_t m4)
{
    Py_ssize_t i = 0;
    __m256i key = _mm256_set1_epi32((int)m4);
    for (; i + 32 <= n; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(v, key));
    }
    return i;
}

static Py_ssize_t
xor_sse2(const unsigned char *src, unsigned char *dst, Py_ssize_t n, uint32_t m4)
{
    Py_ssize_t i = 0;
    __m128i key = _mm_set1_epi32((int)m4);
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(src + i));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(v, key));
    }
    return i;
}
#endif

static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t n, const unsigned char *mask)
{
    Py_ssize_t i = 0;
    uint64_t m8;
    uint32_t m4;
    memcpy(&m4, mask, 4);
#ifdef PW_X86
    if (n >= 64)
        i = have_avx2 ? xor_avx2(src, dst, n, m4) : xor_sse2(src, dst, n, m4);
#endif
    m8 = ((uint64_t)m4 << 32) | m4;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= m8;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}

static PyObject *
apply_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask(data, mask)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        result = NULL;
    }
    else {
        result = PyBytes_FromStringAndSize(NULL, data.len);
        if (result != NULL)
            xor_mask(data.buf, (unsigned char *)PyBytes_AS_STRING(result), data.len, mask.buf);
    }
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *
build_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer payload, mask;
    int first;
    int masked;
    Py_ssize_t n, header;
    PyObject *result;
    unsigned char *out;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "build_frame(first_byte, payload, mask)");
        return NULL;
    }
    first = PyLong_AsLong(args[0]);
    if (first == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    masked = args[2] != Py_None;
    if (masked) {
        if (PyObject_GetBuffer(args[2], &mask, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&payload);
            return NULL;
        }
        if (mask.len != 4) {
            PyBuffer_Release(&mask);
            PyBuffer_Release(&payload);
            PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
            return NULL;
        }
    }
    n = payload.len;
    header = n < 126 ? 2 : (n < 65536 ? 4 : 10);
    result = PyBytes_FromStringAndSize(NULL, header + (masked ? 4 : 0) + n);
    if (result == NULL)
        goto done;
    out = (unsigned char *)PyBytes_AS_STRING(result);
    out[0] = (unsigned char)first;
    if (n < 126) {
        out[1] = (unsigned char)n;
    }
    else if (n < 65536) {
        out[1] = 126;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
    }
    else {
        int i;
        out[1] = 127;
        for (i = 0; i < 8; i++)
            out[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    }
    if (masked) {
        out[1] |= 0x80;
        memcpy(out + header, mask.buf, 4);
        xor_mask(payload.buf, out + header + 4, n, mask.buf);
    }
    else {
        memcpy(out + header, payload.buf, n);
    }
done:
    if (masked)
        PyBuffer_Release(&mask);
    PyBuffer_Release(&payload);
    return result;
}

static PyObject *
scan_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    Py_ssize_t pos, end, max_size;
    int client, writable;
    PyObject *events;
    unsigned char *buf;
    unsigned char stack[512];

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_messages(data, pos, end, client, max_size, events, in_place)");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    client = PyObject_IsTrue(args[3]);
    if (client < 0)
        return NULL;
    max_size = args[4] == Py_None ? PY_SSIZE_T_MAX : PyLong_AsSsize_t(args[4]);
    if (max_size == -1 && PyErr_Occurred())
        return NULL;
    events = args[5];
    if (!PyList_Check(events)) {
        PyErr_SetString(PyExc_TypeError, "events must be a list");
        return NULL;
    }
    /* in_place: the memory is the connection's to change (its read buffer). */
    writable = PyObject_IsTrue(args[6]);
    if (writable < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &data, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return NULL;
    if (pos < 0 || end < pos || end > data.len) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "need 0 <= pos <= end <= len(data)");
        return NULL;
    }
    buf = data.buf;

    while (end - pos >= 2) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        int opcode = b0 & 0x0F;
        int masked = (b1 & 0x80) != 0;
        uint64_t length = b1 & 0x7F;
        Py_ssize_t hlen = 2;
        const unsigned char *mask = NULL;
        unsigned char *payload;
        PyObject *message;

        /* Only FIN data frames (text/binary) without RSV bits, masked as the side requires. */
        if ((b0 & 0xF0) != 0x80 || (opcode != 1 && opcode != 2) || masked == client)
            break;
        if (length == 126) {
            if (end - pos < 4)
                break;
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            hlen = 4;
        }
        else if (length == 127) {
            int i;
            if (end - pos < 10)
                break;
            length = 0;
            for (i = 0; i < 8; i++)
                length = (length << 8) | buf[pos + 2 + i];
            hlen = 10;
        }
        if (length > (uint64_t)max_size)
            break;
        if (masked) {
            mask = buf + pos + hlen;
            hlen += 4;
        }
        if (end - pos < hlen || (uint64_t)(end - pos - hlen) < length)
            break;
        payload = buf + pos + hlen;
        if (opcode == 1) {
            const unsigned char *text = payload;
            unsigned char *heap = NULL;
            unsigned char key[4];
            if (masked && length > 0) {
                if (writable) {
                    /* In place: no scratch copy; undone below if the text is not UTF-8. */
                    memcpy(key, mask, 4);
                    xor_mask(payload, payload, (Py_ssize_t)length, key);
                }
                else {
                    unsigned char *tmp = stack;
                    if (length > sizeof(stack)) {
                        heap = PyMem_Malloc((size_t)length);
                        if (heap == NULL) {
                            PyBuffer_Release(&data);
                            return PyErr_NoMemory();
                        }
                        tmp = heap;
                    }
                    xor_mask(payload, tmp, (Py_ssize_t)length, mask);
                    text = tmp;
                }
            }
            message = PyUnicode_DecodeUTF8((const char *)text, (Py_ssize_t)length, "strict");
            if (heap != NULL)
                PyMem_Free(heap);
            if (message == NULL) {
                if (masked && length > 0 && writable)
                    xor_mask(payload, payload, (Py_ssize_t)length, key); /* masked again */
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyErr_Clear();
                    break; /* the Python path fails the connection with 1007 */
                }
                PyBuffer_Release(&data);
                return NULL;
            }
        }
        else {
            /* Unmasked while copied out: one pass over the payload. */
            message = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
            if (message == NULL) {
                PyBuffer_Release(&data);
                return NULL;
            }
            if (masked)
                xor_mask(payload, (unsigned char *)PyBytes_AS_STRING(message), (Py_ssize_t)length, mask);
            else
                memcpy(PyBytes_AS_STRING(message), payload, (size_t)length);
        }
        if (PyList_Append(events, message) < 0) {
            Py_DECREF(message);
            PyBuffer_Release(&data);
            return NULL;
        }
        Py_DECREF(message);
        pos += hlen + (Py_ssize_t)length;
    }
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(pos);
}

/* For tests: switch AVX2 off (or back on, where the CPU has it) to check the SSE2 path. */
static PyObject *
use_avx2(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
#ifdef PW_X86
    have_avx2 = on && __builtin_cpu_supports("avx2");
    return PyBool_FromLong(have_avx2);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"_use_avx2", use_avx2, METH_O,
     "_use_avx2(on) -> bool: for tests, whether AVX2 unmasking is used now."},
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask) -> bytes: XOR data with the 4-byte mask repeated."},
    {"build_frame", (PyCFunction)(void (*)(void))build_frame, METH_FASTCALL,
     "build_frame(first_byte, payload, mask or None) -> bytes: one serialised frame."},
    {"scan_messages", (PyCFunction)(void (*)(void))scan_messages, METH_FASTCALL,
     "scan_messages(data, pos, end, client, max_size, events, in_place) -> pos: the receive fast path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pulsewire.protocol._speedups",
    "C accelerator for pulsewire.protocol (optional).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
#ifdef PW_X86
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_Create(&module);
}
