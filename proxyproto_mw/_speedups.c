/* Optional C accelerator for proxyproto_mw.decoder.decode.
 *
 * decode() builds the result itself only for the headers real balancers send most:
 * complete, valid v1 TCP4/TCP6 lines and v2 PROXY INET/INET6 STREAM headers. A v2
 * header's TLVs are split and checked by the pure-Python _read_tlvs, so their rules are
 * written once. Anything else (incomplete, invalid, other kinds, an argument that is not
 * exactly bytes) goes to the pure-Python decoder registered with configure(), which
 * stays the reference: every other error and every NEED_DATA comes from Python. The
 * fast path accepts an input only when the Python decoder would return the same result.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <string.h>

#define V1_LINE_MAX 105 /* longest v1 line without its CRLF */
#define V2_FIXED 16     /* signature, version/command, family/transport, length */
#define V2_INET_BLOCK 12
#define V2_INET6_BLOCK 36
#define ADDRESS_TEXT_MAX 64 /* longer address fields are left to Python */

static const char V2_SIGNATURE[12] = "\r\n\r\n\x00\r\nQUIT\n";

typedef struct {
    PyObject *fallback;        /* the pure-Python decode */
    PyTypeObject *decoded;     /* Decoded */
    PyTypeObject *header;      /* ProxyHeader */
    PyObject *proxy;           /* Command.PROXY */
    PyObject *inet;            /* Family.INET */
    PyObject *inet6;           /* Family.INET6 */
    PyObject *stream;          /* TransportProtocol.STREAM */
    PyObject *empty_tlvs;      /* () */
    PyObject *read_tlvs;       /* the pure-Python _read_tlvs(data, start, end) */
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
    memcpy(field, text, (size_t)size); /* size < ADDRESS_TEXT_MAX: checked by the caller */
    field[size] = '\0';
    if (inet_pton(ipv6 ? AF_INET6 : AF_INET, field, packed) != 1) {
        return NULL;
    }
    *valid = 1;
    if (!ipv6) {
        return ascii_str(field, size);
    }
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
        /* Python's own TLV reader: it raises what the Python decoder would. */
        tlvs = PyObject_CallFunction(st->read_tlvs, "Onn", data, tlv_start, end);
        if (tlvs == NULL) {
            return FAST_ERROR;
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

PyDoc_STRVAR(decode_doc,
"decode($module, /, data)\n"
"--\n"
"\n"
"Decode the header at the start of ``data`` (a connection's first bytes, all of them).\n"
"\n"
"C fast path for complete v1 TCP4/TCP6 and v2 INET/INET6 STREAM headers\n"
"given as bytes; any other input is passed to the pure-Python decoder.");

static PyObject *
speedups_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    speedups_state *st = get_state(module);
    if (st == NULL || st->fallback == NULL) { /* no state: a module created, not executed */
        PyErr_SetString(PyExc_RuntimeError, "proxyproto_mw._speedups is not configured");
        return NULL;
    }
    if (nargs == 1 && kwnames == NULL && PyBytes_CheckExact(args[0])) {
        PyObject *data = args[0];
        PyObject *result = NULL;
        int outcome = FAST_FALLBACK;
        char first = PyBytes_GET_SIZE(data) > 0 ? PyBytes_AS_STRING(data)[0] : 0;
        if (first == 'P') {
            outcome = fast_v1(st, data, &result);
        }
        else if (first == '\r') {
            outcome = fast_v2(st, data, &result);
        }
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

PyDoc_STRVAR(configure_doc,
"configure($module, fallback, decoded_type, header_type, proxy, inet, inet6, stream,\n"
"          empty_tlvs, read_tlvs, /)\n"
"--\n"
"\n"
"Register the pure-Python decode, the Decoded and ProxyHeader classes and the values\n"
"the results hold: Command.PROXY, Family.INET, Family.INET6, TransportProtocol.STREAM\n"
"and (); and the pure-Python _read_tlvs(data, start, end), which reads v2 TLVs.");

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
    if (!PyCallable_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "configure(): read_tlvs must be callable");
        return NULL;
    }
    if (!check_tuple_layout(args[1], "decoded_type") ||
        !check_tuple_layout(args[2], "header_type")) {
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
    Py_XSETREF(st->read_tlvs, Py_NewRef(args[8]));
    Py_RETURN_NONE;
}

static PyMethodDef speedups_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))speedups_decode, METH_FASTCALL | METH_KEYWORDS,
     decode_doc},
    {"configure", (PyCFunction)(void (*)(void))speedups_configure, METH_FASTCALL,
     configure_doc},
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
    Py_VISIT(st->read_tlvs);
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
    Py_CLEAR(st->read_tlvs);
    return 0;
}

static void
speedups_free(void *module)
{
    (void)speedups_clear((PyObject *)module);
}

static PyModuleDef_Slot speedups_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "proxyproto_mw._speedups",
    .m_doc = "C fast path for proxyproto_mw.decoder.decode (optional; pure Python is the "
             "reference).",
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
