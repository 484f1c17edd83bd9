/* Optional C accelerator for proxyproto_mw.decoder.decode.
 *
 * decode() builds the result itself only for the headers real balancers send most:
 * complete, valid v1 TCP4/TCP6 lines and v2 PROXY INET/INET6 STREAM headers, their TLVs
 * included (every rule of the pure-Python _read_tlvs: lengths, SSL sub-TLVs, AUTHORITY
 * as UTF-8, UNIQUE_ID at most 128 bytes, the CRC32C over the whole header with its value
 * zeroed). Anything else (incomplete, invalid, other kinds, an argument that is not
 * exactly bytes) goes to the pure-Python decoder registered with configure(), which
 * stays the reference: every error and every NEED_DATA comes from Python, so a header
 * that breaks any rule is handed to Python, which says why. The fast path accepts an
 * input only when the Python decoder would return the same result.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_SSE42_CRC32C 1
#endif

#define V1_LINE_MAX 105 /* longest v1 line without its CRLF */
#define V2_FIXED 16     /* signature, version/command, family/transport, length */
#define V2_INET_BLOCK 12
#define V2_INET6_BLOCK 36
#define ADDRESS_TEXT_MAX 64 /* longer address fields are left to Python */
#define TLV_HEADER 3        /* type, 16-bit length */
#define TLV_AUTHORITY 0x02
#define TLV_CRC32C 0x03
#define TLV_UNIQUE_ID 0x05
#define TLV_SSL 0x20
#define UNIQUE_ID_MAX 128
#define SSL_FIXED 5 /* client flags, 32-bit verify result */

static const char V2_SIGNATURE[12] = "\r\n\r\n\x00\r\nQUIT\n";

/* The str the transport view compares or stores: interned once per module. */
enum {
    N_SOCKET, N_SOCKNAME, N_PEERNAME, N_SSLCONTEXT, N_PROXY_PROTOCOL, N_GET_EXTRA_INFO,
    N_TYPE, N_HTTP, N_EXTENSIONS, N_SCHEME, N_HTTPS, N_CALL_SLOW, N_WRITE,
    /* the scope extension's keys, in ProxyHeader.as_dict's order */
    N_VERSION, N_COMMAND, N_CLIENT, N_SERVER, N_PEER, N_TLS, N_TLVS, N_ALPN, N_AUTHORITY,
    N_UNIQUE_ID, N_SSL, N_AWS_VPCE_ID, N_GCP_PSC_CONNECTION_ID, N_AZURE_PRIVATE_LINK_ID,
    N_PROXY, N_LOCAL,
    /* the real transport's methods the view forwards (asyncio.Transport's API) */
    N_IS_CLOSING, N_CLOSE, N_PAUSE_READING, N_RESUME_READING, N_IS_READING, N_SET_PROTOCOL,
    N_GET_PROTOCOL, N_ABORT, N_CAN_WRITE_EOF, N_WRITE_EOF, N_WRITELINES,
    N_GET_WRITE_BUFFER_SIZE, N_GET_WRITE_BUFFER_LIMITS, N_SET_WRITE_BUFFER_LIMITS,
    /* what the uvicorn adapter's header phase looks up */
    N_POLICY, N_MODE, N_TLS_CONTEXT, N_WAITING, N_TICK, N_CONNECTIONS, N_VERDICT, N_VERSIONS,
    N_HTTP_PROTOCOL, N_APP, N_WS_PROTOCOL_CLASS, N_CONNECTION_MADE, N_DATA_RECEIVED,
    N_SHUTDOWN, N_CONNECTION_MADE_PYTHON, N_DATA_RECEIVED_PYTHON, N_ADD, N_DISCARD, N_CONFIG,
    N_SERVER_STATE, N_APP_STATE, N_LOOP,
    NAME_COUNT
};
#define INFO_FIRST N_VERSION
#define INFO_LAST N_AZURE_PRIVATE_LINK_ID

static const char *const NAME_TEXT[NAME_COUNT] = {
    "socket", "sockname", "peername", "sslcontext", "proxy_protocol", "get_extra_info",
    "type", "http", "extensions", "scheme", "https", "_call_slow", "write",
    "version", "command", "client", "server", "peer", "tls", "tlvs", "alpn", "authority",
    "unique_id", "ssl", "aws_vpce_id", "gcp_psc_connection_id", "azure_private_link_id",
    "PROXY", "LOCAL",
    "is_closing", "close", "pause_reading", "resume_reading", "is_reading", "set_protocol",
    "get_protocol", "abort", "can_write_eof", "write_eof", "writelines",
    "get_write_buffer_size", "get_write_buffer_limits", "set_write_buffer_limits",
    "policy", "mode", "tls_context", "waiting", "tick", "connections", "_verdict", "versions",
    "http_protocol", "app", "ws_protocol_class", "connection_made", "data_received",
    "shutdown", "_connection_made_python", "_data_received_python", "add", "discard", "config",
    "server_state", "app_state", "_loop",
};

typedef struct {
    PyObject *fallback;        /* the pure-Python decode */
    PyTypeObject *decoded;     /* Decoded */
    PyTypeObject *header;      /* ProxyHeader */
    PyObject *proxy;           /* Command.PROXY */
    PyObject *inet;            /* Family.INET */
    PyObject *inet6;           /* Family.INET6 */
    PyObject *stream;          /* TransportProtocol.STREAM */
    PyObject *empty_tlvs;      /* () */
    PyTypeObject *tlv;         /* TLV */
    PyObject *names[NAME_COUNT]; /* interned str, see NAME_TEXT */
    PyObject *view_type;       /* TransportView */
    PyObject *info_template;   /* as_dict's keys, every value None */
    /* The uvicorn adapter's, from configure_protocol() (NULL before: Python serves). */
    PyObject *phase_type;      /* HeaderPhase */
    PyObject *by_loop;         /* proxyproto_mw.deadlines.by_loop */
    PyObject *mode_off;        /* Mode.OFF */
    PyObject *get_event_loop;  /* asyncio.get_event_loop */
    PyObject *proxied;         /* ProxiedTransport */
    PyObject *local;           /* _LocalHeaderTransport */
    PyObject *proxy_headers;   /* uvicorn's ProxyHeadersMiddleware */
    PyObject *ws_classes;      /* {uvicorn's WebSocket protocol: ours} */
    PyObject *ws_wrap;         /* _ws_protocol_with_header */
    PyObject *at_shutdown;     /* _AT_SHUTDOWN */
    PyObject *protocol_kwnames; /* ("config", "server_state", "app_state", "_loop") */
} speedups_state;

static inline speedups_state *
get_state(PyObject *module)
{
    return (speedups_state *)PyModule_GetState(module);
}

/* --- result construction ------------------------------------------------------------ */

/* A tuple subclass instance (a NamedTuple) holding `size` NULL items, as
 * tuple.__new__(type, ...) would allocate it; configure() checked the layout. */
static PyObject *
alloc_tuple_subclass(PyTypeObject *type, Py_ssize_t size)
{
    PyObject *op = type->tp_alloc(type, size);
#if PY_VERSION_HEX >= 0x030E0000
    /* 3.14 caches a tuple's hash in the object; tp_alloc zeroes it, "unset" is -1. */
    if (op != NULL) {
        ((PyTupleObject *)op)->ob_hash = -1;
    }
#endif
    return op;
}

/* A str from ASCII bytes (the caller checked they are ASCII). */
static PyObject *
ascii_str(const char *text, Py_ssize_t size)
{
    PyObject *str = PyUnicode_New(size, 127);
    if (str != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(str), text, (size_t)size);
    }
    return str;
}

/* (host, port); steals the reference to host, which may be NULL (an earlier failure). */
static PyObject *
address(PyObject *host, long port)
{
    if (host == NULL) {
        return NULL;
    }
    PyObject *number = PyLong_FromLong(port);
    if (number == NULL) {
        Py_DECREF(host);
        return NULL;
    }
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(host);
        Py_DECREF(number);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, host);
    PyTuple_SET_ITEM(pair, 1, number);
    return pair;
}

/* Decoded(ProxyHeader(version, PROXY, family, STREAM, source, destination, tlvs, None),
 * data[end:]). Steals the references to source, destination and tlvs (NULL: ()). */
static PyObject *
build_result(speedups_state *st, PyObject *data, Py_ssize_t end, long version,
             PyObject *family, PyObject *source, PyObject *destination, PyObject *tlvs)
{
    if (tlvs == NULL) {
        tlvs = Py_NewRef(st->empty_tlvs);
    }
    PyObject *header = NULL, *rest = NULL, *decoded = NULL, *number = NULL;
    number = PyLong_FromLong(version);
    if (number == NULL) {
        goto error;
    }
    /* The shared empty bytes when nothing follows the header. */
    rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + end,
                                     PyBytes_GET_SIZE(data) - end);
    if (rest == NULL) {
        goto error;
    }
    header = alloc_tuple_subclass(st->header, 8);
    if (header == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(header, 0, number);
    PyTuple_SET_ITEM(header, 1, Py_NewRef(st->proxy));
    PyTuple_SET_ITEM(header, 2, Py_NewRef(family));
    PyTuple_SET_ITEM(header, 3, Py_NewRef(st->stream));
    PyTuple_SET_ITEM(header, 4, source);
    PyTuple_SET_ITEM(header, 5, destination);
    PyTuple_SET_ITEM(header, 6, tlvs);
    PyTuple_SET_ITEM(header, 7, Py_NewRef(Py_None));
    number = source = destination = tlvs = NULL; /* owned by header now */
    decoded = alloc_tuple_subclass(st->decoded, 2);
    if (decoded == NULL) {
        goto error;
    }
    PyTuple_SET_ITEM(decoded, 0, header);
    PyTuple_SET_ITEM(decoded, 1, rest);
    return decoded;

error:
    Py_XDECREF(tlvs);
    Py_XDECREF(source);
    Py_XDECREF(destination);
    Py_XDECREF(number);
    Py_XDECREF(rest);
    Py_XDECREF(header);
    return NULL;
}

/* --- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---------------------------- */

static uint32_t crc32c_table[8][256]; /* slicing by 8 */
#ifdef HAVE_SSE42_CRC32C
static int crc32c_hardware; /* SSE4.2's crc32 instruction is there */
#endif
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void
crc32c_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        }
        crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc32c_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc32c_table[0][c & 0xFF] ^ (c >> 8);
            crc32c_table[k][n] = c;
        }
    }
#ifdef HAVE_SSE42_CRC32C
    __builtin_cpu_init();
    crc32c_hardware = __builtin_cpu_supports("sse4.2") != 0;
#endif
}

/* Continue the (pre- and post-inverted) CRC `crc` over n bytes with the table. */
static uint32_t
crc32c_update_table(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    while (n >= 8) {
        uint32_t low = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                              (uint32_t)p[3] << 24);
        crc = crc32c_table[7][low & 0xFF] ^ crc32c_table[6][(low >> 8) & 0xFF] ^
              crc32c_table[5][(low >> 16) & 0xFF] ^ crc32c_table[4][low >> 24] ^
              crc32c_table[3][p[4]] ^ crc32c_table[2][p[5]] ^ crc32c_table[1][p[6]] ^
              crc32c_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--) {
        crc = crc32c_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
}

#ifdef HAVE_SSE42_CRC32C
__attribute__((target("sse4.2"))) static uint32_t
crc32c_update_sse42(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8); /* unaligned load; the instruction takes little-endian words */
        c = _mm_crc32_u64(c, word);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) {
        c32 = _mm_crc32_u8(c32, *p++);
    }
    return ~c32;
}
#endif

static uint32_t
crc32c_update(uint32_t crc, const unsigned char *p, size_t n, int table)
{
#ifdef HAVE_SSE42_CRC32C
    if (crc32c_hardware && !table) {
        return crc32c_update_sse42(crc, p, n);
    }
#endif
    (void)table;
    return crc32c_update_table(crc, p, n);
}

/* CRC32C of p[0:end] with the 4 bytes at `zeroed` counted as zeros. */
static uint32_t
header_crc32c(const unsigned char *p, Py_ssize_t end, Py_ssize_t zeroed)
{
    static const unsigned char zeros[4] = {0, 0, 0, 0};
    uint32_t crc = crc32c_update(0, p, (size_t)zeroed, 0);
    crc = crc32c_update(crc, zeros, 4, 0);
    return crc32c_update(crc, p + zeroed + 4, (size_t)(end - zeroed - 4), 0);
}

/* --- parsing ------------------------------------------------------------------------ */

/* The outcome of a fast-path attempt. */
enum { FAST_ERROR = -1, FAST_FALLBACK = 0, FAST_DONE = 1 };

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The characters an IPv4 (TCP4) or IPv6 (TCP6) address field may hold. Filtering them
 * first keeps NUL, non-ASCII and separators away from inet_pton; any other byte means
 * Python decides (it raises). */
static inline int
is_address_char(unsigned char c, int ipv6)
{
    if (is_digit(c) || c == '.') {
        return 1;
    }
    unsigned char lower = c | 0x20;
    return ipv6 && (c == ':' || (lower >= 'a' && lower <= 'f'));
}

/* A v1 port field: 1 to 5 ASCII digits, no leading zero, at most 65535; -1 otherwise. */
static long
parse_port(const unsigned char *text, Py_ssize_t size)
{
    if (size < 1 || size > 5 || (text[0] == '0' && size > 1)) {
        return -1;
    }
    long value = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        value = value * 10 + (text[i] - '0');
    }
    return value <= 0xFFFF ? value : -1;
}

/* What inet_pton(AF_INET) accepts, without its copy and call: four decimal octets of at
 * most 255 separated by dots, none with a leading zero (the caller passes only digits and
 * dots). */
static int
is_dotted_quad(const unsigned char *text, Py_ssize_t size)
{
    Py_ssize_t i = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (i >= size || text[i] != '.') {
                return 0;
            }
            i++;
        }
        Py_ssize_t first = i;
        int value = 0;
        while (i < size && is_digit(text[i]) && i - first < 3) {
            value = value * 10 + (text[i] - '0');
            i++;
        }
        if (i == first || value > 255 || (text[first] == '0' && i - first > 1)) {
            return 0;
        }
    }
    return i == size;
}

/* The address text the Python decoder returns for a v1 field, or NULL with *valid = 0
 * when inet_pton rejects it. IPv4 keeps the field's text; IPv6 is normalized by
 * inet_ntop(inet_pton(field)), as socket.inet_ntop and socket.inet_pton do it. */
static PyObject *
v1_address(const unsigned char *text, Py_ssize_t size, int ipv6, int *valid)
{
    char field[ADDRESS_TEXT_MAX];
    unsigned char packed[16];
    char normal[INET6_ADDRSTRLEN];

    *valid = 0;
    if (!ipv6) {
        if (!is_dotted_quad(text, size)) {
            return NULL;
        }
        *valid = 1;
        return ascii_str((const char *)text, size);
    }
    memcpy(field, text, (size_t)size); /* size < ADDRESS_TEXT_MAX: checked by the caller */
    field[size] = '\0';
    if (inet_pton(AF_INET6, field, packed) != 1) {
        return NULL;
    }
    *valid = 1;
    if (inet_ntop(AF_INET6, packed, normal, sizeof(normal)) == NULL) {
        *valid = 0; /* cannot happen for 16 bytes; let Python answer if it does */
        return NULL;
    }
    return ascii_str(normal, (Py_ssize_t)strlen(normal));
}

/* `PROXY TCP4 a b p q\r\n` or `PROXY TCP6 ...`, the line (without CRLF) at most 105
 * bytes, fields separated by single spaces, each address accepted by inet_pton. */
static int
fast_v1(speedups_state *st, PyObject *data, PyObject **result)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < 11 || memcmp(p, "PROXY TCP", 9) != 0 || p[10] != ' ') {
        return FAST_FALLBACK;
    }
    int ipv6;
    if (p[9] == '4') {
        ipv6 = 0;
    }
    else if (p[9] == '6') {
        ipv6 = 1;
    }
    else {
        return FAST_FALLBACK;
    }
    /* Fields are scanned only within the longest line; the CR must be at index <= 105. */
    Py_ssize_t limit = size < V1_LINE_MAX + 1 ? size : V1_LINE_MAX + 1;
    Py_ssize_t start[4], stop[4];
    Py_ssize_t i = 11;
    for (int field = 0; field < 4; field++) {
        start[field] = i;
        if (field < 2) {
            while (i < limit && is_address_char(p[i], ipv6)) {
                i++;
            }
        }
        else {
            while (i < limit && is_digit(p[i])) {
                i++;
            }
        }
        stop[field] = i;
        /* Each field is followed by one space, the last by the CR of a CRLF. */
        if (i == start[field] || i >= limit || p[i] != (field < 3 ? ' ' : '\r')) {
            return FAST_FALLBACK;
        }
        i++;
    }
    Py_ssize_t end = i + 1; /* after the LF */
    if (end > size || p[i] != '\n') {
        return FAST_FALLBACK;
    }
    long source_port = parse_port(p + start[2], stop[2] - start[2]);
    long destination_port = parse_port(p + start[3], stop[3] - start[3]);
    if (source_port < 0 || destination_port < 0 || stop[0] - start[0] >= ADDRESS_TEXT_MAX ||
        stop[1] - start[1] >= ADDRESS_TEXT_MAX) {
        return FAST_FALLBACK;
    }
    int valid;
    PyObject *source_host = v1_address(p + start[0], stop[0] - start[0], ipv6, &valid);
    if (source_host == NULL) {
        return valid ? FAST_ERROR : FAST_FALLBACK;
    }
    PyObject *destination_host = v1_address(p + start[1], stop[1] - start[1], ipv6, &valid);
    if (destination_host == NULL) {
        Py_DECREF(source_host);
        return valid ? FAST_ERROR : FAST_FALLBACK;
    }
    PyObject *source = address(source_host, source_port);
    if (source == NULL) {
        Py_DECREF(destination_host);
        return FAST_ERROR;
    }
    PyObject *destination = address(destination_host, destination_port);
    if (destination == NULL) {
        Py_DECREF(source);
        return FAST_ERROR;
    }
    *result =
        build_result(st, data, end, 1, ipv6 ? st->inet6 : st->inet, source, destination, NULL);
    return *result == NULL ? FAST_ERROR : FAST_DONE;
}

/* Dotted decimal text of 4 bytes into out (at least 16 bytes); returns its length. */
static Py_ssize_t
format_ipv4(char *out, const unsigned char *octets)
{
    char *o = out;
    for (int k = 0; k < 4; k++) {
        unsigned int v = octets[k];
        if (v >= 100) {
            *o++ = (char)('0' + v / 100);
            v %= 100;
            *o++ = (char)('0' + v / 10);
        }
        else if (v >= 10) {
            *o++ = (char)('0' + v / 10);
        }
        *o++ = (char)('0' + v % 10);
        if (k < 3) {
            *o++ = '.';
        }
    }
    return o - out;
}

static PyObject *
v2_host(const unsigned char *packed, int ipv6)
{
    char text[INET6_ADDRSTRLEN];
    if (!ipv6) {
        return ascii_str(text, format_ipv4(text, packed));
    }
    if (inet_ntop(AF_INET6, packed, text, sizeof(text)) == NULL) {
        PyErr_SetFromErrno(PyExc_OSError); /* cannot happen for 16 bytes */
        return NULL;
    }
    return ascii_str(text, (Py_ssize_t)strlen(text));
}

static inline Py_ssize_t
read_u16(const unsigned char *p)
{
    return (Py_ssize_t)p[0] << 8 | p[1];
}

/* The SSL TLV's value: 5 bytes, then sub-TLVs that end exactly where it ends. */
static int
ssl_well_formed(const unsigned char *value, Py_ssize_t size)
{
    if (size < SSL_FIXED) {
        return 0;
    }
    Py_ssize_t offset = SSL_FIXED;
    while (size - offset >= TLV_HEADER) {
        offset += TLV_HEADER + read_u16(value + offset + 1);
    }
    return offset == size;
}

/* 1 if the bytes are UTF-8 as Python's strict codec says, 0 if not, -1 on an error. */
static int
is_utf8(const unsigned char *text, Py_ssize_t size)
{
    Py_ssize_t i = 0;
    while (i < size && text[i] < 0x80) {
        i++;
    }
    if (i == size) {
        return 1; /* ASCII: the usual host name */
    }
    PyObject *decoded = PyUnicode_DecodeUTF8((const char *)text, size, "strict");
    if (decoded == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    Py_DECREF(decoded);
    return 1;
}

/* Check the TLVs in p[start:end] against every rule of _read_tlvs and build their tuple
 * into *tlvs. FAST_FALLBACK when any rule is broken: Python then raises, saying which. */
static int
read_tlvs(speedups_state *st, const unsigned char *p, Py_ssize_t start, Py_ssize_t end,
          PyObject **tlvs)
{
    Py_ssize_t count = 0;
    Py_ssize_t checksum_at = -1;
    Py_ssize_t offset = start;
    while (offset < end) {
        if (end - offset < TLV_HEADER) {
            return FAST_FALLBACK;
        }
        unsigned char kind = p[offset];
        Py_ssize_t value_at = offset + TLV_HEADER;
        Py_ssize_t length = read_u16(p + offset + 1);
        if (length > end - value_at) {
            return FAST_FALLBACK;
        }
        const unsigned char *value = p + value_at;
        switch (kind) {
        case TLV_CRC32C:
            if (length != 4) {
                return FAST_FALLBACK;
            }
            if (checksum_at < 0) {
                checksum_at = value_at; /* the first one is checked, as in Python */
            }
            break;
        case TLV_SSL:
            if (!ssl_well_formed(value, length)) {
                return FAST_FALLBACK;
            }
            break;
        case TLV_AUTHORITY: {
            int utf8 = is_utf8(value, length);
            if (utf8 <= 0) {
                return utf8 < 0 ? FAST_ERROR : FAST_FALLBACK;
            }
            break;
        }
        case TLV_UNIQUE_ID:
            if (length > UNIQUE_ID_MAX) {
                return FAST_FALLBACK;
            }
            break;
        default:
            break;
        }
        offset = value_at + length;
        count++;
    }
    if (checksum_at >= 0) {
        const unsigned char *field = p + checksum_at;
        uint32_t expected = (uint32_t)field[0] << 24 | (uint32_t)field[1] << 16 |
                            (uint32_t)field[2] << 8 | field[3];
        if (header_crc32c(p, end, checksum_at) != expected) {
            return FAST_FALLBACK;
        }
    }
    PyObject *all = PyTuple_New(count);
    if (all == NULL) {
        return FAST_ERROR;
    }
    offset = start;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = read_u16(p + offset + 1);
        PyObject *kind = PyLong_FromLong(p[offset]);
        PyObject *value =
            PyBytes_FromStringAndSize((const char *)p + offset + TLV_HEADER, length);
        PyObject *tlv = (kind == NULL || value == NULL) ? NULL : alloc_tuple_subclass(st->tlv, 2);
        if (tlv == NULL) {
            Py_XDECREF(kind);
            Py_XDECREF(value);
            Py_DECREF(all);
            return FAST_ERROR;
        }
        PyTuple_SET_ITEM(tlv, 0, kind);
        PyTuple_SET_ITEM(tlv, 1, value);
        PyTuple_SET_ITEM(all, i, tlv);
        offset += TLV_HEADER + length;
    }
    *tlvs = all;
    return FAST_DONE;
}

/* A complete v2 PROXY header of family INET or INET6, transport STREAM. */
static int
fast_v2(speedups_state *st, PyObject *data, PyObject **result)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (size < V2_FIXED || memcmp(p, V2_SIGNATURE, sizeof(V2_SIGNATURE)) != 0 ||
        p[12] != 0x21) {
        return FAST_FALLBACK;
    }
    Py_ssize_t length = (p[14] << 8) | p[15];
    int ipv6;
    if (p[13] == 0x11 && length >= V2_INET_BLOCK) {
        ipv6 = 0;
    }
    else if (p[13] == 0x21 && length >= V2_INET6_BLOCK) {
        ipv6 = 1;
    }
    else {
        return FAST_FALLBACK;
    }
    Py_ssize_t end = V2_FIXED + length;
    if (size < end) {
        return FAST_FALLBACK; /* Python says NEED_DATA */
    }
    Py_ssize_t tlv_start = V2_FIXED + (ipv6 ? V2_INET6_BLOCK : V2_INET_BLOCK);
    PyObject *tlvs = NULL; /* () */
    if (tlv_start < end) {
        int outcome = read_tlvs(st, p, tlv_start, end, &tlvs);
        if (outcome != FAST_DONE) {
            return outcome;
        }
    }
    const unsigned char *block = p + V2_FIXED;
    int width = ipv6 ? 16 : 4;
    const unsigned char *ports = block + 2 * width;
    PyObject *source = address(v2_host(block, ipv6), (ports[0] << 8) | ports[1]);
    if (source == NULL) {
        Py_XDECREF(tlvs);
        return FAST_ERROR;
    }
    PyObject *destination = address(v2_host(block + width, ipv6), (ports[2] << 8) | ports[3]);
    if (destination == NULL) {
        Py_DECREF(source);
        Py_XDECREF(tlvs);
        return FAST_ERROR;
    }
    *result = build_result(st, data, end, 2, ipv6 ? st->inet6 : st->inet, source, destination,
                           tlvs);
    return *result == NULL ? FAST_ERROR : FAST_DONE;
}

/* --- module functions --------------------------------------------------------------- */

/* The header at the start of `data` (exact bytes) when C decodes it itself: FAST_DONE with
 * *result a Decoded, FAST_FALLBACK for whatever Python decides, FAST_ERROR with an
 * exception set. */
static int
fast_decode(speedups_state *st, PyObject *data, PyObject **result)
{
    char first = PyBytes_GET_SIZE(data) > 0 ? PyBytes_AS_STRING(data)[0] : 0;
    if (first == 'P') {
        return fast_v1(st, data, result);
    }
    if (first == '\r') {
        return fast_v2(st, data, result);
    }
    return FAST_FALLBACK;
}

PyDoc_STRVAR(decode_doc,
"decode($module, /, data)\n"
"--\n"
"\n"
"Decode the header at the start of ``data`` (a connection's first bytes, all of them).\n"
"\n"
"C fast path for complete, valid v1 TCP4/TCP6 and v2 INET/INET6 STREAM headers\n"
"(TLVs included) given as bytes; any other input is passed to the pure-Python decoder.");

static PyObject *
speedups_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    speedups_state *st = get_state(module);
    if (st == NULL || st->fallback == NULL) { /* no state: a module created, not executed */
        PyErr_SetString(PyExc_RuntimeError, "proxyproto_mw._speedups is not configured");
        return NULL;
    }
    if (nargs == 1 && kwnames == NULL && PyBytes_CheckExact(args[0])) {
        PyObject *result = NULL;
        int outcome = fast_decode(st, args[0], &result);
        if (outcome == FAST_DONE) {
            return result;
        }
        if (outcome == FAST_ERROR) {
            return NULL;
        }
    }
    /* Everything else, keyword calls and wrong argument counts included, is Python's. */
    return PyObject_Vectorcall(st->fallback, args, (size_t)nargs, kwnames);
}

/* Whether `type` is a tuple subclass with tuple's memory layout (a NamedTuple). */
static int
check_tuple_layout(PyObject *type, const char *name)
{
    PyTypeObject *t = (PyTypeObject *)type;
    if (!PyType_Check(type) || !PyType_IsSubtype(t, &PyTuple_Type) ||
        t->tp_basicsize != PyTuple_Type.tp_basicsize ||
        t->tp_itemsize != PyTuple_Type.tp_itemsize || t->tp_dictoffset != 0 ||
        t->tp_weaklistoffset != 0) {
        PyErr_Format(PyExc_TypeError,
                     "configure(): %s must be a tuple subclass without instance "
                     "attributes (a NamedTuple)", name);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(crc32c_doc,
"crc32c($module, data, table=False, /)\n"
"--\n"
"\n"
"CRC32C of ``data``, as the decoder computes it: with SSE4.2 where the CPU has it,\n"
"with the slicing-by-8 table otherwise or when ``table`` is true (for tests).");

static PyObject *
speedups_crc32c(PyObject *module, PyObject *args)
{
    Py_buffer data;
    int table = 0;
    if (!PyArg_ParseTuple(args, "y*|p:crc32c", &data, &table)) {
        return NULL;
    }
    uint32_t crc = crc32c_update(0, (const unsigned char *)data.buf, (size_t)data.len, table);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

PyDoc_STRVAR(configure_doc,
"configure($module, fallback, decoded_type, header_type, proxy, inet, inet6, stream,\n"
"          empty_tlvs, tlv_type, /)\n"
"--\n"
"\n"
"Register the pure-Python decode, the Decoded and ProxyHeader classes and the values\n"
"the results hold: Command.PROXY, Family.INET, Family.INET6, TransportProtocol.STREAM\n"
"and (); and the TLV class.");

static PyObject *
speedups_configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "configure() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyCallable_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "configure(): fallback must be callable");
        return NULL;
    }
    if (!check_tuple_layout(args[1], "decoded_type") ||
        !check_tuple_layout(args[2], "header_type") ||
        !check_tuple_layout(args[8], "tlv_type")) {
        return NULL;
    }
    if (!PyTuple_CheckExact(args[7]) || PyTuple_GET_SIZE(args[7]) != 0) {
        PyErr_SetString(PyExc_TypeError, "configure(): empty_tlvs must be ()");
        return NULL;
    }
    speedups_state *st = get_state(module);
    if (st == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "proxyproto_mw._speedups is not initialized");
        return NULL;
    }
    Py_XSETREF(st->fallback, Py_NewRef(args[0]));
    Py_XSETREF(st->decoded, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(st->header, (PyTypeObject *)Py_NewRef(args[2]));
    Py_XSETREF(st->proxy, Py_NewRef(args[3]));
    Py_XSETREF(st->inet, Py_NewRef(args[4]));
    Py_XSETREF(st->inet6, Py_NewRef(args[5]));
    Py_XSETREF(st->stream, Py_NewRef(args[6]));
    Py_XSETREF(st->empty_tlvs, Py_NewRef(args[7]));
    Py_XSETREF(st->tlv, (PyTypeObject *)Py_NewRef(args[8]));
    Py_RETURN_NONE;
}



/* --- the uvicorn adapter's transport view -------------------------------------------- */

/* proxyproto_mw.uvicorn.ProxiedTransport's base when the accelerator is built: the same
 * fields and answers as the pure-Python _PythonTransportView, which stays the reference.
 * Calling it serves the common request (an HTTP scope, a header without TLVs) here;
 * everything else goes to the Python method _call_slow. */

typedef struct {
    PyObject_HEAD
    PyObject *transport;
    PyObject *header;
    PyObject *peer;
    PyObject *app;
    PyObject *write;
    char tls;
    speedups_state *st; /* the module's: its type holds the module */
} ViewObject;

static void view_dealloc(PyObject *self);

/* The module state of `type`, TransportView or a subclass: the state of the TransportView in
 * its MRO (PyType_GetModuleByDef does this from Python 3.11 on). */
static speedups_state *
view_state(PyTypeObject *type)
{
    PyObject *mro = type->tp_mro;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (base->tp_dealloc == view_dealloc) {
            return (speedups_state *)PyType_GetModuleState(base);
        }
    }
    PyErr_SetString(PyExc_TypeError, "not a TransportView");
    return NULL;
}

static PyObject *
view_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *transport, *header, *peer, *app;
    int tls;
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) || !PyTuple_Check(args) ||
        PyTuple_GET_SIZE(args) != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "TransportView(transport, header, peer, app, tls) takes 5 positional "
                        "arguments");
        return NULL;
    }
    transport = PyTuple_GET_ITEM(args, 0);
    header = PyTuple_GET_ITEM(args, 1);
    peer = PyTuple_GET_ITEM(args, 2);
    app = PyTuple_GET_ITEM(args, 3);
    tls = PyObject_IsTrue(PyTuple_GET_ITEM(args, 4));
    if (tls < 0) {
        return NULL;
    }
    speedups_state *st = view_state(type);
    if (st == NULL) {
        return NULL;
    }
    if (st->header == NULL || !PyObject_TypeCheck(header, st->header)) {
        PyErr_SetString(PyExc_TypeError, "TransportView: header must be a ProxyHeader");
        return NULL;
    }
    PyObject *write = PyObject_GetAttr(transport, st->names[N_WRITE]);
    if (write == NULL) {
        return NULL;
    }
    ViewObject *self = (ViewObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(write);
        return NULL;
    }
    self->transport = Py_NewRef(transport);
    self->header = Py_NewRef(header);
    self->peer = Py_NewRef(peer);
    self->app = Py_NewRef(app);
    self->write = write;
    self->tls = (char)tls;
    self->st = st;
    return (PyObject *)self;
}

static int
view_traverse(ViewObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->transport);
    Py_VISIT(self->header);
    Py_VISIT(self->peer);
    Py_VISIT(self->app);
    Py_VISIT(self->write);
    return 0;
}

static int
view_clear(ViewObject *self)
{
    Py_CLEAR(self->transport);
    Py_CLEAR(self->header);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->app);
    Py_CLEAR(self->write);
    return 0;
}

static void
view_dealloc(PyObject *op)
{
    ViewObject *self = (ViewObject *)op;
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)view_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static inline int
is_name(PyObject *name, PyObject *interned)
{
    /* Two interned strings are equal only if they are the same object; uvicorn's names
     * are constants of its code, so interned. */
    return name == interned || (PyUnicode_CheckExact(name) && !PyUnicode_CHECK_INTERNED(name) &&
                                PyUnicode_Compare(name, interned) == 0);
}

/* The header's item `index` (a ProxyHeader is a tuple: source 4, destination 5, tlvs 6). */
#define HEADER_ITEM(self, index) PyTuple_GET_ITEM((self)->header, (index))

PyDoc_STRVAR(view_get_extra_info_doc,
"get_extra_info($self, name, default=None, /)\n"
"--\n"
"\n"
"The header's view of ``name``, else the real transport's.");

static PyObject *
view_get_extra_info(ViewObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get_extra_info() takes 1 or 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    PyObject *name = args[0];
    PyObject *fallback = nargs == 2 ? args[1] : Py_None;
    PyObject **names = self->st->names;
    /* In the order uvicorn's connection_made asks: socket (twice), sockname, peername,
     * sslcontext. */
    if (is_name(name, names[N_SOCKET])) {
        Py_RETURN_NONE; /* uvicorn asks the socket first: so that it asks for peername */
    }
    if (is_name(name, names[N_SOCKNAME])) {
        return Py_NewRef(HEADER_ITEM(self, 5));
    }
    if (is_name(name, names[N_PEERNAME])) {
        return Py_NewRef(HEADER_ITEM(self, 4));
    }
    if (!self->tls && is_name(name, names[N_SSLCONTEXT])) {
        return Py_NewRef(fallback); /* a plain TCP transport has none */
    }
    if (is_name(name, names[N_PROXY_PROTOCOL])) {
        return Py_NewRef(self->header);
    }
    PyObject *call[3] = {self->transport, name, fallback};
    return PyObject_VectorcallMethod(names[N_GET_EXTRA_INFO], call,
                                     3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The scope extension of a header without TLVs: ProxyHeader.as_dict's dict, as a copy of
 * the module's template (the keys in as_dict's order, every value None), whose first seven
 * values are then replaced (a copy of a dense dict is one memcpy, a replacement no resize). */
static PyObject *
view_info(ViewObject *self)
{
    speedups_state *st = self->st;
    PyObject **names = st->names;
    PyObject *info = PyDict_Copy(st->info_template);
    PyObject *tlvs = PyDict_New();
    if (info == NULL || tlvs == NULL) {
        Py_XDECREF(info);
        Py_XDECREF(tlvs);
        return NULL;
    }
    PyObject *values[N_TLVS - INFO_FIRST + 1] = {
        PyTuple_GET_ITEM(self->header, 0),
        HEADER_ITEM(self, 1) == st->proxy ? names[N_PROXY] : names[N_LOCAL],
        HEADER_ITEM(self, 4),
        HEADER_ITEM(self, 5),
        self->peer,
        self->tls ? Py_True : Py_False,
        tlvs,
    };
    for (int i = INFO_FIRST; i <= N_TLVS; i++) {
        if (PyDict_SetItem(info, names[i], values[i - INFO_FIRST]) < 0) {
            Py_DECREF(tlvs);
            Py_DECREF(info);
            return NULL;
        }
    }
    Py_DECREF(tlvs);
    return info;
}

/* A copy of `scope` with the extension beside the server's own extensions. */
static PyObject *
view_scope(ViewObject *self, PyObject *scope, PyObject *extensions)
{
    PyObject **names = self->st->names;
    PyObject *info = view_info(self);
    if (info == NULL) {
        return NULL;
    }
    PyObject *ours = extensions == NULL ? PyDict_New() : PyDict_Copy(extensions);
    if (ours == NULL || PyDict_SetItem(ours, names[N_PROXY_PROTOCOL], info) < 0) {
        Py_XDECREF(ours);
        Py_DECREF(info);
        return NULL;
    }
    Py_DECREF(info);
    PyObject *copy = PyDict_Copy(scope);
    if (copy == NULL || PyDict_SetItem(copy, names[N_EXTENSIONS], ours) < 0 ||
        (self->tls && PyDict_SetItem(copy, names[N_SCHEME], names[N_HTTPS]) < 0)) {
        Py_XDECREF(copy);
        Py_DECREF(ours);
        return NULL;
    }
    Py_DECREF(ours);
    return copy;
}

static PyObject *
view_call(ViewObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject **names = self->st->names;
    if (kwargs == NULL && PyTuple_GET_SIZE(args) == 3) {
        PyObject *scope = PyTuple_GET_ITEM(args, 0);
        PyObject *tlvs = HEADER_ITEM(self, 6);
        if (PyDict_CheckExact(scope) && PyTuple_CheckExact(tlvs) && PyTuple_GET_SIZE(tlvs) == 0) {
            PyObject *kind = PyDict_GetItemWithError(scope, names[N_TYPE]);
            if (kind == NULL && PyErr_Occurred()) {
                return NULL;
            }
            PyObject *extensions = PyDict_GetItemWithError(scope, names[N_EXTENSIONS]);
            if (extensions == NULL && PyErr_Occurred()) {
                return NULL;
            }
            if (extensions == Py_None) {
                extensions = NULL;
            }
            if (kind != NULL && is_name(kind, names[N_HTTP]) &&
                (extensions == NULL || PyDict_Check(extensions))) {
                PyObject *copy = view_scope(self, scope, extensions);
                if (copy == NULL) {
                    return NULL;
                }
                PyObject *call[3] = {copy, PyTuple_GET_ITEM(args, 1), PyTuple_GET_ITEM(args, 2)};
                PyObject *result = PyObject_Vectorcall(self->app, call, 3, NULL);
                Py_DECREF(copy);
                return result;
            }
        }
    }
    PyObject *slow = PyObject_GetAttr((PyObject *)self, names[N_CALL_SLOW]);
    if (slow == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Call(slow, args, kwargs);
    Py_DECREF(slow);
    return result;
}

/* The real transport's method `index`, called with the view's arguments: no bound method
 * and no Python frame per call (the view's type keeps the generic attribute look-up, so
 * that uvicorn's `transport.close()` finds the method directly). */
static PyObject *
view_forward(ViewObject *self, int index, PyObject *const *args, Py_ssize_t nargs,
             PyObject *kwnames)
{
    PyObject *name = self->st->names[index];
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    if (total < 4) {
        PyObject *call[5] = {self->transport};
        for (Py_ssize_t i = 0; i < total; i++) {
            call[i + 1] = args[i];
        }
        return PyObject_VectorcallMethod(name, call, (size_t)(nargs + 1), kwnames);
    }
    PyObject *method = PyObject_GetAttr(self->transport, name);
    if (method == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(method, args, (size_t)nargs, kwnames);
    Py_DECREF(method);
    return result;
}

#define VIEW_FORWARD(method, index)                                                          \
    static PyObject *view_##method(ViewObject *self, PyObject *const *args, Py_ssize_t nargs, \
                                   PyObject *kwnames)                                         \
    {                                                                                         \
        return view_forward(self, index, args, nargs, kwnames);                               \
    }
VIEW_FORWARD(is_closing, N_IS_CLOSING)
VIEW_FORWARD(close, N_CLOSE)
VIEW_FORWARD(pause_reading, N_PAUSE_READING)
VIEW_FORWARD(resume_reading, N_RESUME_READING)
VIEW_FORWARD(is_reading, N_IS_READING)
VIEW_FORWARD(set_protocol, N_SET_PROTOCOL)
VIEW_FORWARD(get_protocol, N_GET_PROTOCOL)
VIEW_FORWARD(abort, N_ABORT)
VIEW_FORWARD(can_write_eof, N_CAN_WRITE_EOF)
VIEW_FORWARD(write_eof, N_WRITE_EOF)
VIEW_FORWARD(writelines, N_WRITELINES)
VIEW_FORWARD(get_write_buffer_size, N_GET_WRITE_BUFFER_SIZE)
VIEW_FORWARD(get_write_buffer_limits, N_GET_WRITE_BUFFER_LIMITS)
VIEW_FORWARD(set_write_buffer_limits, N_SET_WRITE_BUFFER_LIMITS)
#undef VIEW_FORWARD

static PyMemberDef view_members[] = {
    {"_transport", T_OBJECT_EX, offsetof(ViewObject, transport), READONLY, "The real transport."},
    {"_header", T_OBJECT_EX, offsetof(ViewObject, header), READONLY, "The PROXY header."},
    {"_peer", T_OBJECT_EX, offsetof(ViewObject, peer), READONLY, "The balancer's address."},
    {"_app", T_OBJECT_EX, offsetof(ViewObject, app), READONLY, "The server's app."},
    {"_tls", T_BOOL, offsetof(ViewObject, tls), READONLY, "TLS runs after the header."},
    {"write", T_OBJECT_EX, offsetof(ViewObject, write), READONLY,
     "The real transport's write."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef view_methods[] = {
    {"get_extra_info", (PyCFunction)(void (*)(void))view_get_extra_info, METH_FASTCALL,
     view_get_extra_info_doc},
    {"is_closing", (PyCFunction)(void (*)(void))view_is_closing, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"close", (PyCFunction)(void (*)(void))view_close, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"pause_reading", (PyCFunction)(void (*)(void))view_pause_reading, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"resume_reading", (PyCFunction)(void (*)(void))view_resume_reading, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"is_reading", (PyCFunction)(void (*)(void))view_is_reading, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"set_protocol", (PyCFunction)(void (*)(void))view_set_protocol, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"get_protocol", (PyCFunction)(void (*)(void))view_get_protocol, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"abort", (PyCFunction)(void (*)(void))view_abort, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"can_write_eof", (PyCFunction)(void (*)(void))view_can_write_eof, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"write_eof", (PyCFunction)(void (*)(void))view_write_eof, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"writelines", (PyCFunction)(void (*)(void))view_writelines, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"get_write_buffer_size", (PyCFunction)(void (*)(void))view_get_write_buffer_size, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"get_write_buffer_limits", (PyCFunction)(void (*)(void))view_get_write_buffer_limits, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))view_set_write_buffer_limits, METH_FASTCALL | METH_KEYWORDS,
     "The real transport's."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot view_slots[] = {
    {Py_tp_doc, "A connection that came with a PROXY header, as uvicorn's protocols see it "
                "(the accelerated base of proxyproto_mw.uvicorn.ProxiedTransport)."},
    {Py_tp_new, view_new},
    {Py_tp_dealloc, view_dealloc},
    {Py_tp_traverse, view_traverse},
    {Py_tp_clear, view_clear},
    {Py_tp_call, view_call},
    {Py_tp_members, view_members},
    {Py_tp_methods, view_methods},
    {0, NULL},
};

static PyType_Spec view_spec = {
    .name = "proxyproto_mw._speedups.TransportView",
    .basicsize = sizeof(ViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = view_slots,
};

/* --- the uvicorn adapter's header phase ---------------------------------------------- */

/* proxyproto_mw.uvicorn.ProxyProtocol's base when the accelerator is built: its fields, and
 * the common connection (a trusted peer whose first read holds the whole header, no TLS
 * after it) from connection_made to uvicorn's own protocol. Everything else calls the
 * Python methods ProxyProtocol._connection_made_python and _data_received_python, the
 * reference; _hand_over does what ProxyProtocol._hand_over_python does. */

typedef struct {
    PyObject_HEAD
    PyObject *config;
    PyObject *server_state;
    PyObject *app_state;
    PyObject *loop;
    PyObject *transport;
    PyObject *peer;
    PyObject *admission;
    PyObject *waiting;
    PyObject *pending_tls_data;
    speedups_state *st;
} PhaseObject;

static void phase_dealloc(PyObject *self);

/* The module state of `type`, HeaderPhase or a subclass (as view_state). */
static speedups_state *
phase_state(PyTypeObject *type)
{
    PyObject *mro = type->tp_mro;
    for (Py_ssize_t i = 0; mro != NULL && i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *base = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (base->tp_dealloc == phase_dealloc) {
            return (speedups_state *)PyType_GetModuleState(base);
        }
    }
    PyErr_SetString(PyExc_TypeError, "not a HeaderPhase");
    return NULL;
}

static int
phase_init(PhaseObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"config", "server_state", "app_state", "_loop", NULL};
    PyObject *config, *server_state, *app_state, *loop = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O:ProxyProtocol", keywords, &config,
                                     &server_state, &app_state, &loop)) {
        return -1;
    }
    speedups_state *st = phase_state(Py_TYPE(self));
    if (st == NULL) {
        return -1;
    }
    self->st = st;
    int given = PyObject_IsTrue(loop);
    if (given < 0) {
        return -1;
    }
    if (!given) { /* `_loop or asyncio.get_event_loop()`, as uvicorn's */
        if (st->get_event_loop == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "HeaderPhase: configure_protocol() not called");
            return -1;
        }
        loop = PyObject_CallNoArgs(st->get_event_loop);
        if (loop == NULL) {
            return -1;
        }
    }
    else {
        Py_INCREF(loop);
    }
    Py_XSETREF(self->config, Py_NewRef(config));
    Py_XSETREF(self->server_state, Py_NewRef(server_state));
    Py_XSETREF(self->app_state, Py_NewRef(app_state));
    Py_XSETREF(self->loop, loop);
    return 0;
}

static int
phase_traverse(PhaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->config);
    Py_VISIT(self->server_state);
    Py_VISIT(self->app_state);
    Py_VISIT(self->loop);
    Py_VISIT(self->transport);
    Py_VISIT(self->peer);
    Py_VISIT(self->admission);
    Py_VISIT(self->waiting);
    Py_VISIT(self->pending_tls_data);
    return 0;
}

static int
phase_clear(PhaseObject *self)
{
    Py_CLEAR(self->config);
    Py_CLEAR(self->server_state);
    Py_CLEAR(self->app_state);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->admission);
    Py_CLEAR(self->waiting);
    Py_CLEAR(self->pending_tls_data);
    return 0;
}

static void
phase_dealloc(PyObject *op)
{
    PhaseObject *self = (PhaseObject *)op;
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)phase_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* `self.NAME(arg)`: the Python method that serves what the fast path does not. */
static PyObject *
phase_python(PhaseObject *self, int index, PyObject *arg)
{
    if (self->st == NULL) { /* __init__ did not run */
        return PyObject_CallMethod((PyObject *)self, NAME_TEXT[index], "O", arg);
    }
    PyObject *call[2] = {(PyObject *)self, arg};
    return PyObject_VectorcallMethod(self->st->names[index], call,
                                     2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The class attribute `index` of the connection's protocol class (policy, tls_context, ...):
 * a new reference. */
static inline PyObject *
class_attribute(PhaseObject *self, int index)
{
    return PyObject_GetAttr((PyObject *)Py_TYPE(self), self->st->names[index]);
}

/* set.add / set.discard on uvicorn's server_state.connections. */
static int
count_connection(PhaseObject *self, int add)
{
    PyObject *connections = PyObject_GetAttr(self->server_state, self->st->names[N_CONNECTIONS]);
    if (connections == NULL) {
        return -1;
    }
    int outcome;
    if (PySet_Check(connections)) {
        outcome = add ? PySet_Add(connections, (PyObject *)self)
                      : PySet_Discard(connections, (PyObject *)self);
    }
    else {
        PyObject *result = PyObject_CallMethodOneArg(
            connections, self->st->names[add ? N_ADD : N_DISCARD], (PyObject *)self);
        outcome = result == NULL ? -1 : 0;
        Py_XDECREF(result);
    }
    Py_DECREF(connections);
    return outcome < 0 ? -1 : 0;
}

PyDoc_STRVAR(phase_connection_made_doc,
"connection_made($self, transport, /)\n"
"--\n"
"\n"
"Watch for the header; uvicorn's protocol is built once it is in.");

static PyObject *
phase_connection_made(PhaseObject *self, PyObject *transport)
{
    speedups_state *st = self->st;
    if (st == NULL || st->by_loop == NULL || self->loop == NULL || self->server_state == NULL) {
        goto python;
    }
    PyObject **names = st->names;
    Py_XSETREF(self->transport, Py_NewRef(transport));
    PyObject *policy = class_attribute(self, N_POLICY);
    if (policy == NULL) {
        return NULL;
    }
    if (policy == Py_None) { /* the environment's policy, read on the first connection */
        Py_DECREF(policy);
        goto python;
    }
    PyObject *mode = PyObject_GetAttr(policy, names[N_MODE]);
    Py_DECREF(policy);
    if (mode == NULL) {
        return NULL;
    }
    int off = mode == st->mode_off;
    Py_DECREF(mode);
    if (off) {
        goto python;
    }
    PyObject *deadlines = PyDict_GetItemWithError(st->by_loop, self->loop);
    if (deadlines == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        goto python; /* the first connection in a while: Python starts the sweep */
    }
    PyObject *call[2] = {transport, names[N_PEERNAME]};
    PyObject *peer = PyObject_VectorcallMethod(names[N_GET_EXTRA_INFO], call,
                                               2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (peer == NULL) {
        return NULL;
    }
    if (!PyTuple_CheckExact(peer) || PyTuple_GET_SIZE(peer) < 2) {
        Py_DECREF(peer); /* no address (a peer gone already), or not an IP socket's */
        goto python;
    }
    Py_INCREF(deadlines);
    PyObject *waiting = PyObject_GetAttr(deadlines, names[N_WAITING]);
    PyObject *tick = waiting == NULL ? NULL : PyObject_GetAttr(deadlines, names[N_TICK]);
    Py_DECREF(deadlines);
    if (tick == NULL || !PyDict_CheckExact(waiting) ||
        PyDict_SetItem(waiting, (PyObject *)self, tick) < 0) {
        if (tick != NULL && !PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "HeaderDeadlines.waiting must be a dict");
        }
        Py_XDECREF(waiting);
        Py_XDECREF(tick);
        Py_DECREF(peer);
        return NULL;
    }
    Py_DECREF(tick);
    Py_XSETREF(self->admission, Py_NewRef(Py_None));
    Py_XSETREF(self->peer, peer);
    Py_XSETREF(self->waiting, waiting);
    /* Counted among uvicorn's connections, so that its shutdown reaches this one. */
    if (count_connection(self, 1) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;

python:
    return phase_python(self, N_CONNECTION_MADE_PYTHON, transport);
}

static PyObject *hand_over(PhaseObject *self, PyObject *transport, PyObject *header,
                           PyObject *peer, PyObject *data);

PyDoc_STRVAR(phase_data_received_doc,
"data_received($self, data, /)\n"
"--\n"
"\n"
"Apply the policy to the first bytes until the header is complete.");

static PyObject *
phase_data_received(PhaseObject *self, PyObject *data)
{
    speedups_state *st = self->st;
    if (st == NULL || st->by_loop == NULL || st->header == NULL || self->waiting == NULL ||
        !PyDict_CheckExact(self->waiting) || (self->admission != NULL && self->admission != Py_None) ||
        !PyBytes_CheckExact(data) || self->peer == NULL || !PyTuple_CheckExact(self->peer) ||
        PyTuple_GET_SIZE(self->peer) < 2 || self->transport == NULL) {
        goto python;
    }
    PyObject **names = st->names;
    PyObject *tls_context = class_attribute(self, N_TLS_CONTEXT);
    if (tls_context == NULL) {
        return NULL;
    }
    int tls = tls_context != Py_None;
    Py_DECREF(tls_context);
    if (tls) {
        goto python;
    }
    PyObject *policy = class_attribute(self, N_POLICY);
    if (policy == NULL) {
        return NULL;
    }
    /* TrustPolicy.admit's first branch: a trusted peer, a complete header of an accepted
     * version. */
    PyObject *verdict = PyObject_CallMethodOneArg(policy, names[N_VERDICT],
                                                  PyTuple_GET_ITEM(self->peer, 0));
    if (verdict == NULL) {
        Py_DECREF(policy);
        return NULL;
    }
    int trusted = PyObject_IsTrue(verdict);
    Py_DECREF(verdict);
    if (trusted <= 0) {
        Py_DECREF(policy);
        if (trusted < 0) {
            return NULL;
        }
        goto python;
    }
    PyObject *decoded = NULL;
    int outcome = fast_decode(st, data, &decoded);
    if (outcome != FAST_DONE) {
        Py_DECREF(policy);
        if (outcome == FAST_ERROR) {
            return NULL;
        }
        goto python;
    }
    PyObject *header = PyTuple_GET_ITEM(decoded, 0);
    PyObject *versions = PyObject_GetAttr(policy, names[N_VERSIONS]);
    Py_DECREF(policy);
    int accepted = versions == NULL ? -1 : PySequence_Contains(versions, PyTuple_GET_ITEM(header, 0));
    Py_XDECREF(versions);
    if (accepted <= 0) {
        Py_DECREF(decoded);
        if (accepted < 0) {
            return NULL;
        }
        goto python;
    }
    /* Admitted: the header phase is over. */
    PyObject *waiting = self->waiting;
    self->waiting = Py_NewRef(Py_None);
    PyObject *arrived = PyDict_GetItemWithError(waiting, (PyObject *)self);
    Py_XINCREF(arrived);
    if ((arrived == NULL && PyErr_Occurred()) ||
        (arrived != NULL && PyDict_DelItem(waiting, (PyObject *)self) < 0)) {
        Py_XDECREF(arrived);
        Py_DECREF(waiting);
        Py_DECREF(decoded);
        return NULL;
    }
    Py_DECREF(waiting);
    Py_XSETREF(self->admission, Py_NewRef(Py_None));
    if (count_connection(self, 0) < 0) { /* uvicorn's protocol counts it now */
        Py_XDECREF(arrived);
        Py_DECREF(decoded);
        return NULL;
    }
    PyObject *transport = Py_NewRef(self->transport);
    PyObject *peer = Py_NewRef(self->peer);
    PyObject *protocol = hand_over(self, transport, header, peer, PyTuple_GET_ITEM(decoded, 1));
    Py_DECREF(transport);
    Py_DECREF(peer);
    Py_DECREF(decoded);
    if (protocol == NULL) {
        Py_XDECREF(arrived);
        return NULL;
    }
    int at_shutdown = arrived == NULL ? 0 : PyObject_RichCompareBool(arrived, st->at_shutdown, Py_EQ);
    Py_XDECREF(arrived);
    PyObject *result = NULL;
    if (at_shutdown > 0) { /* the server is stopping: this request, then close */
        result = PyObject_CallMethodNoArgs(protocol, names[N_SHUTDOWN]);
    }
    Py_DECREF(protocol);
    if (at_shutdown < 0 || (at_shutdown > 0 && result == NULL)) {
        return NULL;
    }
    Py_XDECREF(result);
    Py_RETURN_NONE;

python:
    return phase_python(self, N_DATA_RECEIVED_PYTHON, data);
}

/* ProxyProtocol._hand_over_python, in C: build uvicorn's protocol and give it the
 * connection (through the view when a header came); a new reference to the protocol. */
static PyObject *
hand_over(PhaseObject *self, PyObject *transport, PyObject *header, PyObject *peer,
          PyObject *data)
{
    speedups_state *st = self->st;
    PyObject **names = st->names;
    PyObject *arguments[4] = {self->config, self->server_state, self->app_state, self->loop};
    for (int i = 0; i < 4; i++) {
        if (arguments[i] == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "ProxyProtocol: not initialised");
            return NULL;
        }
    }
    PyObject *protocol_class = class_attribute(self, N_HTTP_PROTOCOL);
    if (protocol_class == NULL) {
        return NULL;
    }
    PyObject *protocol = PyObject_Vectorcall(protocol_class, arguments, 0, st->protocol_kwnames);
    Py_DECREF(protocol_class);
    if (protocol == NULL) {
        return NULL;
    }
    PyObject *connected = NULL, *app = NULL, *result = NULL;
    Py_INCREF(peer);
    if (header == Py_None) {
        connected = Py_NewRef(transport);
    }
    else {
        if (!PyObject_TypeCheck(header, st->header)) {
            PyErr_SetString(PyExc_TypeError, "_hand_over: header must be a ProxyHeader or None");
            goto error;
        }
        app = PyObject_GetAttr(protocol, names[N_APP]);
        if (app == NULL) {
            goto error;
        }
        if ((PyObject *)Py_TYPE(app) == st->proxy_headers) {
            /* The header's addresses are authoritative: X-Forwarded-For written by a client
             * must not replace them. */
            Py_SETREF(app, PyObject_GetAttr(app, names[N_APP]));
            if (app == NULL) {
                goto error;
            }
        }
        if (peer != Py_None) {
            Py_ssize_t size = PyObject_Length(peer);
            if (size < 0) {
                goto error;
            }
            if (size != 2) { /* IPv6: host and port, as the extension holds them */
                PyObject *host = PySequence_GetItem(peer, 0);
                PyObject *port = host == NULL ? NULL : PySequence_GetItem(peer, 1);
                PyObject *pair = port == NULL ? NULL : PyTuple_Pack(2, host, port);
                Py_XDECREF(host);
                Py_XDECREF(port);
                if (pair == NULL) {
                    goto error;
                }
                Py_SETREF(peer, pair);
            }
        }
        PyObject *view_class = PyTuple_GET_ITEM(header, 4) != Py_None ? st->proxied : st->local;
        PyObject *view_arguments[5] = {transport, header, peer, app, Py_False};
        PyObject *tls_context = class_attribute(self, N_TLS_CONTEXT);
        if (tls_context == NULL) {
            goto error;
        }
        view_arguments[4] = tls_context != Py_None ? Py_True : Py_False;
        Py_DECREF(tls_context);
        connected = PyObject_Vectorcall(view_class, view_arguments, 5, NULL);
        if (connected == NULL || PyObject_SetAttr(protocol, names[N_APP], connected) < 0) {
            goto error;
        }
        PyObject *ws_class = PyObject_GetAttr(protocol, names[N_WS_PROTOCOL_CLASS]);
        if (ws_class == NULL) {
            goto error;
        }
        if (ws_class != Py_None) {
            PyObject *ours = PyDict_GetItemWithError(st->ws_classes, ws_class);
            if (ours != NULL) {
                Py_INCREF(ours);
            }
            else if (!PyErr_Occurred()) {
                ours = PyObject_CallOneArg(st->ws_wrap, ws_class);
            }
            int failed = ours == NULL ||
                         PyObject_SetAttr(protocol, names[N_WS_PROTOCOL_CLASS], ours) < 0;
            Py_XDECREF(ours);
            if (failed) {
                Py_DECREF(ws_class);
                goto error;
            }
        }
        Py_DECREF(ws_class);
    }
    /* uvloop caches the protocol's data_received: set_protocol makes it look again. */
    result = PyObject_CallMethodOneArg(transport, names[N_SET_PROTOCOL], protocol);
    if (result == NULL) {
        goto error;
    }
    Py_SETREF(result, PyObject_CallMethodOneArg(protocol, names[N_CONNECTION_MADE], connected));
    if (result == NULL) {
        goto error;
    }
    Py_CLEAR(result);
    if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) > 0) {
        int nonempty = PyObject_IsTrue(data);
        if (nonempty < 0) {
            goto error;
        }
        if (nonempty) {
            result = PyObject_CallMethodOneArg(protocol, names[N_DATA_RECEIVED], data);
            if (result == NULL) {
                goto error;
            }
            Py_CLEAR(result);
        }
    }
    Py_XDECREF(app);
    Py_DECREF(peer);
    Py_DECREF(connected);
    return protocol;

error:
    Py_XDECREF(app);
    Py_DECREF(peer);
    Py_XDECREF(connected);
    Py_DECREF(protocol);
    return NULL;
}

PyDoc_STRVAR(phase_hand_over_doc,
"_hand_over($self, transport, header, peer, data, /)\n"
"--\n"
"\n"
"Build uvicorn's protocol and give it the connection; later bytes go to it.");

static PyObject *
phase_hand_over(PhaseObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "_hand_over() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    if (self->st == NULL || self->st->by_loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "HeaderPhase: configure_protocol() not called");
        return NULL;
    }
    return hand_over(self, args[0], args[1], args[2], args[3]);
}

static PyMemberDef phase_members[] = {
    {"_config", T_OBJECT, offsetof(PhaseObject, config), 0, "uvicorn's Config."},
    {"_server_state", T_OBJECT, offsetof(PhaseObject, server_state), 0,
     "uvicorn's ServerState."},
    {"_app_state", T_OBJECT, offsetof(PhaseObject, app_state), 0, "The lifespan's state."},
    {"_loop", T_OBJECT, offsetof(PhaseObject, loop), 0, "The event loop."},
    {"_transport", T_OBJECT, offsetof(PhaseObject, transport), 0, "The real transport."},
    {"_peer", T_OBJECT, offsetof(PhaseObject, peer), 0, "The balancer's address."},
    {"_admission", T_OBJECT, offsetof(PhaseObject, admission), 0,
     "Made when the first bytes leave the header incomplete."},
    {"_waiting", T_OBJECT, offsetof(PhaseObject, waiting), 0,
     "The loop's connections waiting for their header (None: the header phase is over)."},
    {"_pending_tls_data", T_OBJECT, offsetof(PhaseObject, pending_tls_data), 0,
     "Bytes that arrive while TLS after the header starts."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef phase_methods[] = {
    {"connection_made", (PyCFunction)phase_connection_made, METH_O, phase_connection_made_doc},
    {"data_received", (PyCFunction)phase_data_received, METH_O, phase_data_received_doc},
    {"_hand_over", (PyCFunction)(void (*)(void))phase_hand_over, METH_FASTCALL,
     phase_hand_over_doc},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot phase_slots[] = {
    {Py_tp_doc, "The header phase of a uvicorn connection (the accelerated base of "
                "proxyproto_mw.uvicorn.ProxyProtocol)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, phase_init},
    {Py_tp_dealloc, phase_dealloc},
    {Py_tp_traverse, phase_traverse},
    {Py_tp_clear, phase_clear},
    {Py_tp_members, phase_members},
    {Py_tp_methods, phase_methods},
    {0, NULL},
};

static PyType_Spec phase_spec = {
    .name = "proxyproto_mw._speedups.HeaderPhase",
    .basicsize = sizeof(PhaseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = phase_slots,
};

PyDoc_STRVAR(configure_protocol_doc,
"configure_protocol($module, by_loop, mode_off, get_event_loop, proxied, local,\n"
"                   proxy_headers, ws_classes, ws_wrap, at_shutdown, /)\n"
"--\n"
"\n"
"Register what the uvicorn adapter's header phase uses (proxyproto_mw.uvicorn calls it).");

static PyObject *
speedups_configure_protocol(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "configure_protocol() takes 9 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    speedups_state *st = get_state(module);
    if (!PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[6]) ||
        !PyCallable_Check(args[2]) || !PyType_Check(args[3]) || !PyType_Check(args[4]) ||
        !PyType_Check(args[5]) || !PyCallable_Check(args[7]) || !PyLong_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "configure_protocol(): wrong argument types");
        return NULL;
    }
    for (int i = 3; i <= 4; i++) {
        if (!PyType_IsSubtype((PyTypeObject *)args[i], (PyTypeObject *)st->view_type)) {
            PyErr_SetString(PyExc_TypeError, "configure_protocol(): views must be TransportViews");
            return NULL;
        }
    }
    if (st->protocol_kwnames == NULL) {
        st->protocol_kwnames = PyTuple_Pack(4, st->names[N_CONFIG], st->names[N_SERVER_STATE],
                                            st->names[N_APP_STATE], st->names[N_LOOP]);
        if (st->protocol_kwnames == NULL) {
            return NULL;
        }
    }
    Py_XSETREF(st->mode_off, Py_NewRef(args[1]));
    Py_XSETREF(st->get_event_loop, Py_NewRef(args[2]));
    Py_XSETREF(st->proxied, Py_NewRef(args[3]));
    Py_XSETREF(st->local, Py_NewRef(args[4]));
    Py_XSETREF(st->proxy_headers, Py_NewRef(args[5]));
    Py_XSETREF(st->ws_classes, Py_NewRef(args[6]));
    Py_XSETREF(st->ws_wrap, Py_NewRef(args[7]));
    Py_XSETREF(st->at_shutdown, Py_NewRef(args[8]));
    Py_XSETREF(st->by_loop, Py_NewRef(args[0])); /* last: it turns the fast path on */
    Py_RETURN_NONE;
}

static PyMethodDef speedups_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))speedups_decode, METH_FASTCALL | METH_KEYWORDS,
     decode_doc},
    {"configure", (PyCFunction)(void (*)(void))speedups_configure, METH_FASTCALL,
     configure_doc},
    {"crc32c", speedups_crc32c, METH_VARARGS, crc32c_doc},
    {"configure_protocol", (PyCFunction)(void (*)(void))speedups_configure_protocol,
     METH_FASTCALL, configure_protocol_doc},
    {NULL, NULL, 0, NULL},
};

/* --- module state ------------------------------------------------------------------- */

static int
speedups_traverse(PyObject *module, visitproc visit, void *arg)
{
    speedups_state *st = get_state(module);
    if (st == NULL) {
        return 0;
    }
    Py_VISIT(st->fallback);
    Py_VISIT(st->decoded);
    Py_VISIT(st->header);
    Py_VISIT(st->proxy);
    Py_VISIT(st->inet);
    Py_VISIT(st->inet6);
    Py_VISIT(st->stream);
    Py_VISIT(st->empty_tlvs);
    Py_VISIT(st->tlv);
    for (int i = 0; i < NAME_COUNT; i++) {
        Py_VISIT(st->names[i]);
    }
    Py_VISIT(st->view_type);
    Py_VISIT(st->info_template);
    Py_VISIT(st->phase_type);
    Py_VISIT(st->by_loop);
    Py_VISIT(st->mode_off);
    Py_VISIT(st->get_event_loop);
    Py_VISIT(st->proxied);
    Py_VISIT(st->local);
    Py_VISIT(st->proxy_headers);
    Py_VISIT(st->ws_classes);
    Py_VISIT(st->ws_wrap);
    Py_VISIT(st->at_shutdown);
    Py_VISIT(st->protocol_kwnames);
    return 0;
}

static int
speedups_clear(PyObject *module)
{
    speedups_state *st = get_state(module);
    if (st == NULL) {
        return 0;
    }
    Py_CLEAR(st->fallback);
    Py_CLEAR(st->decoded);
    Py_CLEAR(st->header);
    Py_CLEAR(st->proxy);
    Py_CLEAR(st->inet);
    Py_CLEAR(st->inet6);
    Py_CLEAR(st->stream);
    Py_CLEAR(st->empty_tlvs);
    Py_CLEAR(st->tlv);
    for (int i = 0; i < NAME_COUNT; i++) {
        Py_CLEAR(st->names[i]);
    }
    Py_CLEAR(st->view_type);
    Py_CLEAR(st->info_template);
    Py_CLEAR(st->phase_type);
    Py_CLEAR(st->by_loop);
    Py_CLEAR(st->mode_off);
    Py_CLEAR(st->get_event_loop);
    Py_CLEAR(st->proxied);
    Py_CLEAR(st->local);
    Py_CLEAR(st->proxy_headers);
    Py_CLEAR(st->ws_classes);
    Py_CLEAR(st->ws_wrap);
    Py_CLEAR(st->at_shutdown);
    Py_CLEAR(st->protocol_kwnames);
    return 0;
}

static void
speedups_free(void *module)
{
    (void)speedups_clear((PyObject *)module);
}

static int
speedups_exec(PyObject *module)
{
    speedups_state *st = get_state(module);
    for (int i = 0; i < NAME_COUNT; i++) {
        st->names[i] = PyUnicode_InternFromString(NAME_TEXT[i]);
        if (st->names[i] == NULL) {
            return -1;
        }
    }
    st->info_template = PyDict_New();
    if (st->info_template == NULL) {
        return -1;
    }
    for (int i = INFO_FIRST; i <= INFO_LAST; i++) {
        if (PyDict_SetItem(st->info_template, st->names[i], Py_None) < 0) {
            return -1;
        }
    }
    st->view_type = PyType_FromModuleAndSpec(module, &view_spec, NULL);
    if (st->view_type == NULL || PyModule_AddObjectRef(module, "TransportView", st->view_type) < 0) {
        return -1;
    }
    st->phase_type = PyType_FromModuleAndSpec(module, &phase_spec, NULL);
    if (st->phase_type == NULL || PyModule_AddObjectRef(module, "HeaderPhase", st->phase_type) < 0) {
        return -1;
    }
    if (pthread_once(&crc32c_once, crc32c_init) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "proxyproto_mw._speedups: CRC32C set-up failed");
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "proxyproto_mw._speedups",
    .m_doc = "C fast paths for proxyproto_mw.decoder.decode and the uvicorn adapter's "
             "transport view (optional; pure Python is the reference).",
    .m_size = sizeof(speedups_state),
    .m_methods = speedups_methods,
    .m_slots = speedups_slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
