/* The one sequential step of decoding context-coded codebook indices (index coding "ctx",
 * jointsparse/codecs/index_context.py): the symbols of each context are already decoded, each
 * context's run in coding order; this puts them back in layer order, where the context of an index
 * is the one before it in its row. Each step needs the previous output, so it cannot be
 * vectorised; in Python it costs ~0.5 s a million indices, here a few milliseconds.
 *
 * interleave(by_context, starts, first_in_row, context_of, out)
 *   by_context    uint8[n]        the symbols, grouped by context (context 0 first)
 *   starts        int64[k + 1]    context c's symbols are by_context[starts[c]:starts[c + 1]],
 *                                 starts[0] = 0, starts[k] = n
 *   first_in_row  uint8[n]        1 where an index is the first of its row (context 0)
 *   context_of    uint8[a]        context (1..k-1) of the index after a symbol s in the same row
 *   out           uint8[n]        written
 * Raises ValueError when a context runs out of symbols or a symbol has no context: the caller
 * turns it into a FormatError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A C-contiguous buffer of items of `itemsize` bytes whose format ends in one of `formats`
 * ("B": uint8; "lq": int64), so a caller's wrong dtype is an error, never misread memory. */
static int get_buffer(PyObject *object, Py_buffer *view, Py_ssize_t itemsize, const char *formats, int writable, const char *name) {
    if (PyObject_GetBuffer(object, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    const char *format = view->format ? view->format : "B";
    char code = format[0] ? format[strlen(format) - 1] : 0;
    if (view->itemsize != itemsize || !code || !strchr(formats, code)) {
        PyErr_Format(PyExc_TypeError, "interleave: %s must be %s", name, itemsize == 1 ? "uint8" : "int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *interleave(PyObject *self, PyObject *args) {
    PyObject *objects[5];
    if (!PyArg_ParseTuple(args, "OOOOO", &objects[0], &objects[1], &objects[2], &objects[3], &objects[4])) return NULL;
    Py_buffer by_context, starts, first, context_of, out;
    Py_buffer *views[5] = {&by_context, &starts, &first, &context_of, &out};
    static const char *names[5] = {"by_context", "starts", "first_in_row", "context_of", "out"};
    for (int k = 0; k < 5; k++) {
        if (get_buffer(objects[k], views[k], k == 1 ? 8 : 1, k == 1 ? "lq" : "B", k == 4, names[k]) < 0) {
            while (k--) PyBuffer_Release(views[k]);
            return NULL;
        }
    }
    PyObject *result = NULL;
    Py_ssize_t n = by_context.len, contexts = starts.len / 8 - 1, alphabet = context_of.len;
    int64_t *next = NULL;
    if (first.len != n || out.len != n || contexts < 1) {
        PyErr_SetString(PyExc_ValueError, "interleave: buffer sizes disagree");
        goto done;
    }
    const int64_t *bounds = (const int64_t *)starts.buf;
    next = malloc((size_t)contexts * sizeof(int64_t));
    if (!next) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t c = 0; c < contexts; c++) {
        if (bounds[c + 1] < bounds[c] || (c == 0 && (bounds[0] != 0 || bounds[contexts] != n))) {
            PyErr_SetString(PyExc_ValueError, "interleave: context bounds are not an ascending split of the symbols");
            goto done;
        }
        next[c] = bounds[c];
    }
    const uint8_t *symbols = by_context.buf, *starts_row = first.buf, *context = context_of.buf;
    uint8_t *written = out.buf;
    Py_ssize_t current = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (starts_row[i]) {
            current = 0;
        } else if (i == 0) {
            PyErr_SetString(PyExc_ValueError, "the first index is not the first of its row");
            goto done;
        }
        if (current >= contexts || next[current] >= bounds[current + 1]) {
            PyErr_Format(PyExc_ValueError, "context %zd runs out of symbols at index %zd", current, i);
            goto done;
        }
        uint8_t symbol = symbols[next[current]++];
        written[i] = symbol;
        if (symbol >= alphabet) {
            PyErr_Format(PyExc_ValueError, "symbol %d outside an alphabet of %zd", (int)symbol, alphabet);
            goto done;
        }
        current = context[symbol];
    }
    result = Py_None;
    Py_INCREF(result);
done:
    free(next);
    PyBuffer_Release(&by_context);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&first);
    PyBuffer_Release(&context_of);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"interleave", interleave, METH_VARARGS, "Put context-grouped index symbols back in layer order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_interleave", NULL, -1, methods};

PyMODINIT_FUNC PyInit__interleave(void) { return PyModule_Create(&module); }
