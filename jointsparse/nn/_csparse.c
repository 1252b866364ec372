/* Sparse CPU kernels for the jointsparse runtime (SPEC section 11), built by pip as a C extension.
 *
 * Every kernel reduces to one micro-kernel, gather_axpy: dst[0:width] = init + sum over a list of
 * non-zeros of value * src[offset : offset + width], where the rows being summed are contiguous
 * (tiles of one Winograd position, output pixels of one row, batch columns). It keeps 2 x 4 AVX
 * accumulators in registers for 32 columns at a time and consumes two non-zeros per pass, so each
 * product costs one load and one FMA and nothing goes through memory until the row is done; the
 * earlier numba and FBGEMM/MKL paths re-read and re-wrote the accumulator row per non-zero.
 *
 * - winograd_conv: sparse Winograd convolution F(m, r) fused per block of tile rows: input
 *   transform (separable, zero entries of B^T skipped, vectorised across tiles), sparse products
 *   per Winograd position, output transform and bias, with one output channel's products in
 *   a small per-thread buffer.
 * - direct_conv: direct sparse convolution (stride, dilation, groups) on a column-phase-split
 *   padded copy of the input, so that every stride reads contiguous rows.
 * - csr_matmul: CSR [R, K] times a dense [K, width] (sparse fully connected layers).
 *
 * Threads: OpenMP when the compiler has it, with the count passed by the caller
 * (torch.get_num_threads()); one thread runs no parallel region at all. All arrays are C-contiguous
 * float32 / int32 buffers whose shapes the Python wrapper (_compiled.py) checks; this file trusts
 * them. The GIL is released while a kernel runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#define JS_AVX 1
#endif

#define MAX_T 16 /* largest Winograd tile side t = m + r - 1 this file handles */

static inline int64_t round_up8(int64_t n) { return (n + 7) & ~(int64_t)7; }

/* dst[j] = init + sum_{nz in [start, stop)} vals[nz] * base[idx[nz] * scale + j], j < width. */
static inline void gather_axpy(float *restrict dst, const float *restrict base, const int32_t *restrict idx,
                               int64_t scale, const float *restrict vals, int64_t start, int64_t stop,
                               int64_t width, float init) {
    int64_t j = 0;
#ifdef JS_AVX
    for (; j + 32 <= width; j += 32) {
        __m256 a0 = _mm256_set1_ps(init), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
        int64_t nz = start;
        for (; nz + 2 <= stop; nz += 2) {
            const float *s = base + (int64_t)idx[nz] * scale + j;
            const float *u = base + (int64_t)idx[nz + 1] * scale + j;
            __m256 w = _mm256_broadcast_ss(vals + nz), v = _mm256_broadcast_ss(vals + nz + 1);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 8), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 16), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 24), a3);
            b0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(u), b0);
            b1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(u + 8), b1);
            b2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(u + 16), b2);
            b3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(u + 24), b3);
        }
        if (nz < stop) {
            const float *s = base + (int64_t)idx[nz] * scale + j;
            __m256 w = _mm256_broadcast_ss(vals + nz);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 8), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 16), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 24), a3);
        }
        _mm256_storeu_ps(dst + j, _mm256_add_ps(a0, b0));
        _mm256_storeu_ps(dst + j + 8, _mm256_add_ps(a1, b1));
        _mm256_storeu_ps(dst + j + 16, _mm256_add_ps(a2, b2));
        _mm256_storeu_ps(dst + j + 24, _mm256_add_ps(a3, b3));
    }
    for (; j + 16 <= width; j += 16) {
        __m256 a0 = _mm256_set1_ps(init), a1 = a0;
        __m256 b0 = _mm256_setzero_ps(), b1 = b0;
        int64_t nz = start;
        for (; nz + 2 <= stop; nz += 2) {
            const float *s = base + (int64_t)idx[nz] * scale + j;
            const float *u = base + (int64_t)idx[nz + 1] * scale + j;
            __m256 w = _mm256_broadcast_ss(vals + nz), v = _mm256_broadcast_ss(vals + nz + 1);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 8), a1);
            b0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(u), b0);
            b1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(u + 8), b1);
        }
        if (nz < stop) {
            const float *s = base + (int64_t)idx[nz] * scale + j;
            __m256 w = _mm256_broadcast_ss(vals + nz);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(s + 8), a1);
        }
        _mm256_storeu_ps(dst + j, _mm256_add_ps(a0, b0));
        _mm256_storeu_ps(dst + j + 8, _mm256_add_ps(a1, b1));
    }
    for (; j + 8 <= width; j += 8) {
        __m256 a0 = _mm256_set1_ps(init), a1 = _mm256_setzero_ps(), a2 = a1, a3 = a1;
        int64_t nz = start;
        for (; nz + 4 <= stop; nz += 4) {
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + nz), _mm256_loadu_ps(base + (int64_t)idx[nz] * scale + j), a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + nz + 1), _mm256_loadu_ps(base + (int64_t)idx[nz + 1] * scale + j), a1);
            a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + nz + 2), _mm256_loadu_ps(base + (int64_t)idx[nz + 2] * scale + j), a2);
            a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + nz + 3), _mm256_loadu_ps(base + (int64_t)idx[nz + 3] * scale + j), a3);
        }
        for (; nz < stop; nz++)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + nz), _mm256_loadu_ps(base + (int64_t)idx[nz] * scale + j), a0);
        _mm256_storeu_ps(dst + j, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
#endif
    /* Columns left over (width not a multiple of 8, or no AVX): plain loops, 8 at a time so that
       a compiler without the intrinsics can still vectorise them. */
    for (; j < width; j += 8) {
        int64_t w = width - j < 8 ? width - j : 8;
        float acc[8];
        for (int64_t q = 0; q < w; q++) acc[q] = init;
        for (int64_t nz = start; nz < stop; nz++) {
            const float *s = base + (int64_t)idx[nz] * scale + j;
            float v = vals[nz];
            for (int64_t q = 0; q < w; q++) acc[q] += v * s[q];
        }
        for (int64_t q = 0; q < w; q++) dst[j + q] = acc[q];
    }
}

/* out[r] = init[r] + sum vals * x[cols]: one column (a fully connected layer at batch 1). */
static inline float gather_dot(const float *restrict x, const int32_t *restrict cols, const float *restrict vals,
                               int64_t start, int64_t stop) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int64_t nz = start;
    for (; nz + 4 <= stop; nz += 4) {
        s0 += vals[nz] * x[cols[nz]];
        s1 += vals[nz + 1] * x[cols[nz + 1]];
        s2 += vals[nz + 2] * x[cols[nz + 2]];
        s3 += vals[nz + 3] * x[cols[nz + 3]];
    }
    for (; nz < stop; nz++) s0 += vals[nz] * x[cols[nz]];
    return (s0 + s1) + (s2 + s3);
}

/* ---- scratch memory: grown, never shrunk, one region per call site; a fresh multi-megabyte
   buffer per call cost more than the convolution itself (page faults, SPEC section 10). Guarded
   by scratch_lock for the whole call of a kernel that uses them. ---- */
typedef struct {
    float *ptr;
    size_t size;
} Scratch;

static Scratch scratch_slots[4];

/* Held while a kernel uses the scratch buffers: a second Python thread calling in would otherwise
   grow (free) a buffer that the first is still using with the GIL released. */
static PyThread_type_lock scratch_lock;

static void lock_scratch(void) {
    Py_BEGIN_ALLOW_THREADS;
    PyThread_acquire_lock(scratch_lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS;
}

static float *scratch(int slot, size_t count) {
    Scratch *s = &scratch_slots[slot];
    if (s->size < count) {
        free(s->ptr);
        s->ptr = NULL;
        s->size = 0;
        if (posix_memalign((void **)&s->ptr, 64, count * sizeof(float) + 64) != 0) return NULL;
        s->size = count;
    }
    return s->ptr;
}

static int thread_count(int requested) { return requested < 1 ? 1 : requested; }

/* ------------------------------------------------------------------------------------------------ */
/* Winograd                                                                                         */
/* ------------------------------------------------------------------------------------------------ */

/* Padded image plane of one channel, zero outside the input. */
static void pad_plane(float *restrict dst, const float *restrict src, int64_t h, int64_t w, int64_t hp, int64_t wp,
                      int64_t top, int64_t left) {
    memset(dst, 0, (size_t)(hp * wp) * sizeof(float));
    for (int64_t y = 0; y < h; y++) {
        int64_t py = y + top;
        if (py < 0 || py >= hp) continue;
        int64_t x0 = 0, x1 = w;
        if (left < 0) x0 = -left;
        if (x1 + left > wp) x1 = wp - left;
        if (x1 > x0) memcpy(dst + py * wp + x0 + left, src + y * w + x0, (size_t)(x1 - x0) * sizeof(float));
    }
}

typedef struct {
    int64_t m, r, t, tt;
    int64_t cin, cout, h, w, out_h, out_w, pad, tiles_h, tiles_w, hp, wp;
    const float *bt; /* [t, t] */
    const float *at; /* [m, t] */
    const int32_t *indptr, *cols; /* CSR rows (position, out channel) -> input channel */
    const float *vals, *bias;
    int lavin23; /* F(2,3) with Lavin's matrices: the hand-vectorised transforms apply */
} WinogradProblem;

/* dst[0:n] = sum over the non-zero coef[j] (j < count) of coef[j] * src[j * stride + 0:n]: one row
   of a separable transform pass, zero coefficients skipped (B^T and A^T are about half zeros). */
static inline void combine_rows(float *restrict dst, const float *restrict src, int64_t stride, const float *coef,
                                int64_t count, int64_t n) {
    memset(dst, 0, (size_t)n * sizeof(float));
    for (int64_t j = 0; j < count; j++) {
        const float c = coef[j];
        if (c == 0.f) continue;
        const float *restrict s = src + j * stride;
        for (int64_t q = 0; q < n; q++) dst[q] += c * s[q];
    }
}

/* V[p, c, 0:ldv] for the tile rows [ty0, ty1) of one padded channel plane. */
static void winograd_input_tiles(const WinogradProblem *P, const float *restrict plane, int64_t ty0, int64_t ty1,
                                 int64_t ldv, float *restrict gathered, float *restrict half, float *restrict v_c,
                                 int64_t v_stride) {
    const int64_t t = P->t, m = P->m, nw = P->tiles_w;
    /* gathered[a*t + b][i] = d_i[a][b] for tile i of the block */
    for (int64_t a = 0; a < t; a++)
        for (int64_t b = 0; b < t; b++) {
            float *restrict g = gathered + (a * t + b) * ldv;
            int64_t i = 0;
            for (int64_t ty = ty0; ty < ty1; ty++) {
                const float *row = plane + (ty * m + a) * P->wp + b;
                for (int64_t tx = 0; tx < nw; tx++) g[i++] = row[tx * m];
            }
            for (; i < ldv; i++) g[i] = 0.f;
        }
    /* half[a*t + j] = sum_b B^T[j][b] d[a][b]; V[i*t + j] = sum_a B^T[i][a] half[a*t + j] */
    for (int64_t a = 0; a < t; a++)
        for (int64_t j = 0; j < t; j++) combine_rows(half + (a * t + j) * ldv, gathered + a * t * ldv, ldv, P->bt + j * t, t, ldv);
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < t; j++) combine_rows(v_c + (i * t + j) * v_stride, half + j * ldv, t * ldv, P->bt + i * t, t, ldv);
}

#ifdef JS_AVX
/* F(2x2, 3x3) with Lavin's matrices (B^T rows [1 0 -1 0], [0 1 1 0], [0 -1 1 0], [0 1 0 -1];
   A^T rows [1 1 1 0], [0 1 -1 -1]), which winograd_matrices(2, 3) returns; the Python side checks
   the matrices before it asks for this path. Eight tiles of a tile row at a time: a tile row's
   input columns 2*tx .. 2*tx+3 de-interleave into even/odd vectors, so the transform is 32 vector
   additions per 8 tiles instead of a gather per tile element. */
static inline void deinterleave(const float *src, __m256 *even, __m256 *odd) {
    __m256 lo = _mm256_loadu_ps(src), hi = _mm256_loadu_ps(src + 8);
    __m256 a = _mm256_permute2f128_ps(lo, hi, 0x20), b = _mm256_permute2f128_ps(lo, hi, 0x31);
    *even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    *odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
}
#endif

/* Column transform d B of one input row for one tile whose row starts at src. */
static inline void f23_row_scalar(const float *src, float u[4]) {
    u[0] = src[0] - src[2];
    u[1] = src[1] + src[2];
    u[2] = src[2] - src[1];
    u[3] = src[1] - src[3];
}

static void f23_input_tiles(const WinogradProblem *P, const float *restrict plane, int64_t ty0, int64_t ty1,
                            int64_t ldv, float *restrict v_c, int64_t p_stride) {
    const int64_t nw = P->tiles_w, wp = P->wp;
    int64_t q = 0;
    for (int64_t ty = ty0; ty < ty1; ty++) {
        const float *rows[4];
        for (int a = 0; a < 4; a++) rows[a] = plane + (ty * 2 + a) * wp;
        int64_t tx = 0;
#ifdef JS_AVX
        /* A last chunk past the row's end reads into the next row (the plane has slack after its
           last row) and its extra lanes land on the next tile row's slots, which that row then
           overwrites, or past the block's tiles, which are zeroed below. */
        for (; tx < nw; tx += 8) {
            __m256 u[4][4];
            for (int a = 0; a < 4; a++) {
                __m256 e, o, e2, o2;
                deinterleave(rows[a] + 2 * tx, &e, &o);
                deinterleave(rows[a] + 2 * tx + 2, &e2, &o2);
                u[a][0] = _mm256_sub_ps(e, e2);
                u[a][1] = _mm256_add_ps(o, e2);
                u[a][2] = _mm256_sub_ps(e2, o);
                u[a][3] = _mm256_sub_ps(o, o2);
            }
            const int64_t at = q + tx;
            for (int j = 0; j < 4; j++) {
                _mm256_storeu_ps(v_c + (0 * 4 + j) * p_stride + at, _mm256_sub_ps(u[0][j], u[2][j]));
                _mm256_storeu_ps(v_c + (1 * 4 + j) * p_stride + at, _mm256_add_ps(u[1][j], u[2][j]));
                _mm256_storeu_ps(v_c + (2 * 4 + j) * p_stride + at, _mm256_sub_ps(u[2][j], u[1][j]));
                _mm256_storeu_ps(v_c + (3 * 4 + j) * p_stride + at, _mm256_sub_ps(u[1][j], u[3][j]));
            }
        }
#else
        for (; tx < nw; tx++) {
            float u[4][4];
            for (int a = 0; a < 4; a++) f23_row_scalar(rows[a] + 2 * tx, u[a]);
            for (int j = 0; j < 4; j++) {
                v_c[(0 * 4 + j) * p_stride + q + tx] = u[0][j] - u[2][j];
                v_c[(1 * 4 + j) * p_stride + q + tx] = u[1][j] + u[2][j];
                v_c[(2 * 4 + j) * p_stride + q + tx] = u[2][j] - u[1][j];
                v_c[(3 * 4 + j) * p_stride + q + tx] = u[1][j] - u[3][j];
            }
        }
#endif
        q += nw;
    }
    for (int p = 0; p < 16; p++)
        for (int64_t z = q; z < ldv; z++) v_c[p * p_stride + z] = 0.f;
}

/* A^T M A + bias for one output channel: M [16][ldv] (position a*4+b) -> out_k. */
static void f23_output_tiles(const WinogradProblem *P, const float *restrict prod, int64_t ldv, int64_t ty0,
                             int64_t ty1, float bias, float *restrict out_k) {
    const int64_t nw = P->tiles_w, out_h = P->out_h, out_w = P->out_w;
    int64_t q = 0;
    for (int64_t ty = ty0; ty < ty1; ty++) {
        const int64_t oy = ty * 2;
        const int rows_in = oy + 1 < out_h ? 2 : 1;
        int64_t tx = 0;
#ifdef JS_AVX
        for (; tx < nw; tx += 8, q += 8) {
            __m256 z[2][4];
            for (int b = 0; b < 4; b++) {
                __m256 m0 = _mm256_loadu_ps(prod + (0 * 4 + b) * ldv + q), m1 = _mm256_loadu_ps(prod + (1 * 4 + b) * ldv + q);
                __m256 m2 = _mm256_loadu_ps(prod + (2 * 4 + b) * ldv + q), m3 = _mm256_loadu_ps(prod + (3 * 4 + b) * ldv + q);
                z[0][b] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                z[1][b] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
            }
            const __m256 bv = _mm256_set1_ps(bias);
            for (int i = 0; i < rows_in; i++) {
                __m256 y0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(z[i][0], z[i][1]), z[i][2]), bv);
                __m256 y1 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(z[i][1], z[i][2]), z[i][3]), bv);
                __m256 lo = _mm256_unpacklo_ps(y0, y1), hi = _mm256_unpackhi_ps(y0, y1);
                float *dst = out_k + (oy + i) * out_w + 2 * tx;
                if (2 * (tx + 8) <= out_w) {
                    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(lo, hi, 0x20));
                    _mm256_storeu_ps(dst + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
                } else { /* the row's last, partial chunk */
                    float tmp[16];
                    _mm256_storeu_ps(tmp, _mm256_permute2f128_ps(lo, hi, 0x20));
                    _mm256_storeu_ps(tmp + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
                    for (int64_t e = 0; e < out_w - 2 * tx; e++) dst[e] = tmp[e];
                }
            }
        }
        q -= tx - nw; /* back to this row's end: the last chunk may have run past it */
#else
        for (; tx < nw; tx++, q++) {
            float z[2][4];
            for (int b = 0; b < 4; b++) {
                float m0 = prod[(0 * 4 + b) * ldv + q], m1 = prod[(1 * 4 + b) * ldv + q];
                float m2 = prod[(2 * 4 + b) * ldv + q], m3 = prod[(3 * 4 + b) * ldv + q];
                z[0][b] = m0 + m1 + m2;
                z[1][b] = m1 - m2 - m3;
            }
            for (int i = 0; i < rows_in; i++) {
                float *dst = out_k + (oy + i) * out_w + 2 * tx;
                dst[0] = z[i][0] + z[i][1] + z[i][2] + bias;
                if (2 * tx + 1 < out_w) dst[1] = z[i][1] - z[i][2] - z[i][3] + bias;
            }
        }
#endif
    }
}

/* A^T M A + bias into the output for one output channel whose products M [t*t][ldv] are in prod
   (overwritten: its first row becomes a buffer). */
static void winograd_output_tiles(const WinogradProblem *P, int64_t k, int64_t ldv, int64_t ty0, int64_t ty1,
                                  float *restrict prod, float *restrict half, float *restrict out_k) {
    const int64_t t = P->t, m = P->m, nw = P->tiles_w;
    const int64_t count = (ty1 - ty0) * nw;
    if (P->lavin23) {
        f23_output_tiles(P, prod, ldv, ty0, ty1, P->bias ? P->bias[k] : 0.f, out_k);
        return;
    }
    /* half[i*t + b] = sum_a A^T[i][a] prod[a*t + b]; y = sum_b A^T[j][b] half[i*t + b] (in prod's
       first row, free by then) */
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < t; b++) combine_rows(half + (i * t + b) * ldv, prod + b * ldv, t * ldv, P->at + i * t, t, ldv);
    const float bias = P->bias ? P->bias[k] : 0.f;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < m; j++) {
            float *restrict y = prod;
            combine_rows(y, half + i * t * ldv, ldv, P->at + j * t, t, count);
            int64_t q = 0;
            for (int64_t ty = ty0; ty < ty1; ty++) {
                int64_t oy = ty * m + i;
                if (oy >= P->out_h) {
                    q += nw;
                    continue;
                }
                float *restrict orow = out_k + oy * P->out_w + j;
                int64_t full = (P->out_w - j + m - 1) / m; /* tiles whose column j is inside the output */
                if (full > nw) full = nw;
                for (int64_t tx = 0; tx < full; tx++) orow[tx * m] = y[q + tx] + bias;
                q += nw;
            }
        }
}

/* Output channels per pass over one Winograd position's V rows: their products [KC][t*t][ldv]
   and that position's V (Cin x ldv) together stay in L2. */
#define KC 32

static int winograd_run(const WinogradProblem *P, const float *x, float *out, int64_t n, int threads) {
    const int64_t tt = P->tt, cin = P->cin, cout = P->cout;
    /* Tile rows per block: V (t*t x Cin x tiles) near 256 KiB so that it is read from L2 by
       every chunk of output channels; at least 32 tiles so a pass amortises its non-zero loop. */
    int64_t target = (int64_t)65536 / (tt * cin);
    if (target < 32) target = 32;
    int64_t rows = target / P->tiles_w;
    if (rows < 1) rows = 1;
    if (rows > P->tiles_h) rows = P->tiles_h;
    /* width: the products' columns; ldv: the row stride, 8 more, room for the vectorised
       transform's last chunk of a row; p_stride: one position's rows, padded off a power of two
       (a 32 KiB stride put the 16 positions' stores of a tile in one L1 set) */
    const int64_t width = round_up8(rows * P->tiles_w);
    const int64_t ldv = width + 8;
    const int64_t p_stride = cin * ldv + 16;
    const int64_t plane = P->hp * P->wp;
    /* + 32: the vectorised F(2,3) transform reads up to 16 floats past a plane row's end */
    float *padded = scratch(0, (size_t)(cin * plane + 32));
    float *v = scratch(1, (size_t)(tt * p_stride));
    /* per thread: KC channels' products, then the generic transforms' two [t*t x ldv] buffers */
    const int64_t per_thread = (KC + 2) * tt * ldv;
    float *work = scratch(2, (size_t)(threads * per_thread));
    if (!padded || !v || !work) return -1;
    const int64_t chunks = (cout + KC - 1) / KC;
    Py_BEGIN_ALLOW_THREADS;
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * cin * P->h * P->w;
        float *oi = out + img * cout * P->out_h * P->out_w;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
        for (int64_t c = 0; c < cin; c++)
            pad_plane(padded + c * plane, xi + c * P->h * P->w, P->h, P->w, P->hp, P->wp, P->pad, P->pad);
        for (int64_t ty0 = 0; ty0 < P->tiles_h; ty0 += rows) {
            int64_t ty1 = ty0 + rows < P->tiles_h ? ty0 + rows : P->tiles_h;
#pragma omp parallel num_threads(threads) if (threads > 1)
            {
#ifdef _OPENMP
                float *mine = work + omp_get_thread_num() * per_thread;
#else
                float *mine = work;
#endif
                float *extra = mine + KC * tt * ldv;
#pragma omp for schedule(static)
                for (int64_t c = 0; c < cin; c++) {
                    if (P->lavin23)
                        f23_input_tiles(P, padded + c * plane, ty0, ty1, ldv, v + c * ldv, p_stride);
                    else
                        winograd_input_tiles(P, padded + c * plane, ty0, ty1, ldv, extra, extra + tt * ldv, v + c * ldv, p_stride);
                }
#pragma omp for schedule(static)
                for (int64_t chunk = 0; chunk < chunks; chunk++) {
                    const int64_t k0 = chunk * KC, k1 = k0 + KC < cout ? k0 + KC : cout;
                    for (int64_t p = 0; p < tt; p++)
                        for (int64_t k = k0; k < k1; k++) {
                            const int64_t row = p * cout + k;
                            gather_axpy(mine + ((k - k0) * tt + p) * ldv, v + p * p_stride, P->cols, ldv, P->vals,
                                        P->indptr[row], P->indptr[row + 1], width, 0.f);
                        }
                    for (int64_t k = k0; k < k1; k++)
                        winograd_output_tiles(P, k, ldv, ty0, ty1, mine + (k - k0) * tt * ldv, extra,
                                              oi + k * P->out_h * P->out_w);
                }
            }
        }
    }
    Py_END_ALLOW_THREADS;
    return 0;
}

/* winograd_conv(x, out, bt, at, indptr, cols, vals, bias_or_None, m, r, pad, threads) */
static PyObject *py_winograd_conv(PyObject *self, PyObject *args) {
    Py_buffer x, out, bt, at, indptr, cols, vals;
    PyObject *bias_obj;
    long long n, cin, h, w, cout, out_h, out_w, m, r, pad;
    int threads, lavin23;
    if (!PyArg_ParseTuple(args, "y*w*y*y*y*y*y*OLLLLLLLLLLii", &x, &out, &bt, &at, &indptr, &cols, &vals, &bias_obj, &n,
                          &cin, &h, &w, &cout, &out_h, &out_w, &m, &r, &pad, &threads, &lavin23))
        return NULL;
    Py_buffer bias = {0};
    int have_bias = bias_obj != Py_None;
    PyObject *result = NULL;
    lock_scratch();
    if (have_bias && PyObject_GetBuffer(bias_obj, &bias, PyBUF_SIMPLE) != 0) goto done;
    WinogradProblem P;
    P.m = m;
    P.r = r;
    P.t = m + r - 1;
    P.tt = P.t * P.t;
    if (P.t > MAX_T) {
        PyErr_SetString(PyExc_ValueError, "Winograd tile side above 16");
        goto done;
    }
    P.cin = cin;
    P.cout = cout;
    P.h = h;
    P.w = w;
    P.out_h = out_h;
    P.out_w = out_w;
    P.pad = pad;
    P.tiles_h = (out_h + m - 1) / m;
    P.tiles_w = (out_w + m - 1) / m;
    P.hp = P.tiles_h * m + r - 1;
    P.wp = P.tiles_w * m + r - 1;
    P.bt = bt.buf;
    P.at = at.buf;
    P.indptr = indptr.buf;
    P.cols = cols.buf;
    P.vals = vals.buf;
    P.bias = have_bias ? bias.buf : NULL;
    P.lavin23 = lavin23 && m == 2 && r == 3;
    if (winograd_run(&P, x.buf, out.buf, n, thread_count(threads)) != 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyThread_release_lock(scratch_lock);
    if (have_bias && bias.obj) PyBuffer_Release(&bias);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    PyBuffer_Release(&bt);
    PyBuffer_Release(&at);
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&cols);
    PyBuffer_Release(&vals);
    return result;
}

/* ------------------------------------------------------------------------------------------------ */
/* Direct sparse convolution                                                                        */
/* ------------------------------------------------------------------------------------------------ */

/* direct_conv(x, out, indptr, cin_of, ky_of, kx_of, vals, bias_or_None,
               n, cin, h, w, cout, out_h, out_w, stride_h, stride_w, dil_h, dil_w, top, left, threads)
   x is unpadded; zero padding (top/left; bottom/right follow from out_h/out_w) happens here.

   The padded input is copied once into phase planes: Q[c][ry][rx][y'][x'] = padded(y'*sh + ry,
   x'*sw + rx). Output pixel (oy, ox) under tap (ky, kx) then reads phase ((ky*dh) % sh,
   (kx*dw) % sw) at (oy + ky*dh/sh, ox + kx*dw/sw), so with output rows laid out wq wide (wq >= the
   output width; the extra columns are computed and dropped) a block of output rows is ONE
   contiguous run for every non-zero, whatever the stride: the micro-kernel sweeps the whole block,
   and a 7x7 map costs one pass per non-zero instead of seven short ones. */
static PyObject *py_direct_conv(PyObject *self, PyObject *args) {
    Py_buffer x, out, indptr, cin_of, ky_of, kx_of, vals;
    PyObject *bias_obj;
    long long n, cin, h, w, cout, out_h, out_w, sh, sw, dh, dw, top, left;
    int threads;
    if (!PyArg_ParseTuple(args, "y*w*y*y*y*y*y*OLLLLLLLLLLLLLi", &x, &out, &indptr, &cin_of, &ky_of, &kx_of, &vals,
                          &bias_obj, &n, &cin, &h, &w, &cout, &out_h, &out_w, &sh, &sw, &dh, &dw, &top, &left, &threads))
        return NULL;
    Py_buffer bias = {0};
    int have_bias = bias_obj != Py_None;
    PyObject *result = NULL;
    int32_t *offsets = NULL;
    lock_scratch();
    if (have_bias && PyObject_GetBuffer(bias_obj, &bias, PyBUF_SIMPLE) != 0) goto done;
    {
        const int32_t *ip = indptr.buf, *co = cin_of.buf, *kyo = ky_of.buf, *kxo = kx_of.buf;
        const float *vv = vals.buf, *bb = have_bias ? bias.buf : NULL;
        const int64_t nnz = ip[cout];
        int64_t reach_y = 0, reach_x = 0; /* largest ky*dh/sh and kx*dw/sw */
        unsigned char used[64 * 64];      /* which (ry, rx) phases any non-zero reads */
        if (sh > 64 || sw > 64) {
            PyErr_SetString(PyExc_ValueError, "strides above 64 are not supported by the compiled kernel");
            goto done;
        }
        memset(used, 0, sizeof(used));
        for (int64_t z = 0; z < nnz; z++) {
            int64_t yy = (int64_t)kyo[z] * dh, xx = (int64_t)kxo[z] * dw;
            if (yy / sh > reach_y) reach_y = yy / sh;
            if (xx / sw > reach_x) reach_x = xx / sw;
            used[(yy % sh) * 64 + xx % sw] = 1;
        }
        const int64_t wq = out_w + reach_x;
        const int64_t hq = out_h + reach_y + 1; /* + 1: a block's rounded-up width reads past its last row */
        const int64_t phase_plane = hq * wq, plane = sh * sw * phase_plane;
        /* output rows per pass: about 512 columns, so that a pass over the non-zeros reads one
           block of every input channel it touches from L1/L2 */
        int64_t block = 512 / wq;
        if (block < 1) block = 1;
        if (block > out_h) block = out_h;
        const int64_t width = round_up8(block * wq);
        const int threads_ = thread_count(threads);
        float *q = scratch(0, (size_t)(cin * plane + width));
        float *rows = scratch(1, (size_t)(threads_ * width));
        offsets = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int32_t));
        if (!q || !rows || !offsets) {
            PyErr_NoMemory();
            goto done;
        }
        if ((int64_t)cin * plane + width > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "input too large for the compiled kernel's 32-bit offsets");
            goto done;
        }
        for (int64_t z = 0; z < nnz; z++) {
            int64_t yy = (int64_t)kyo[z] * dh, xx = (int64_t)kxo[z] * dw;
            offsets[z] = (int32_t)(co[z] * plane + ((yy % sh) * sw + xx % sw) * phase_plane + (yy / sh) * wq + xx / sw);
        }
        const float *xs = x.buf;
        float *os = out.buf;
        const int64_t blocks = (out_h + block - 1) / block;
        Py_BEGIN_ALLOW_THREADS;
        for (int64_t img = 0; img < n; img++) {
            const float *xi = xs + img * cin * h * w;
            float *oi = os + img * cout * out_h * out_w;
#pragma omp parallel for num_threads(threads_) schedule(static) if (threads_ > 1)
            for (int64_t c = 0; c < cin; c++) {
                for (int64_t ry = 0; ry < sh; ry++)
                    for (int64_t rx = 0; rx < sw; rx++) {
                        if (!used[ry * 64 + rx]) continue;
                        float *dst = q + c * plane + (ry * sw + rx) * phase_plane;
                        for (int64_t yq = 0; yq < hq; yq++) {
                            const int64_t iy = yq * sh + ry - top;
                            float *drow = dst + yq * wq;
                            if (iy < 0 || iy >= h) {
                                memset(drow, 0, (size_t)wq * sizeof(float));
                                continue;
                            }
                            const float *src = xi + (c * h + iy) * w;
                            if (sw == 1) {
                                /* a shifted copy: zeros, the row, zeros */
                                for (int64_t u = 0; u < wq; u++) {
                                    const int64_t ix = u + rx - left;
                                    drow[u] = (ix >= 0 && ix < w) ? src[ix] : 0.f;
                                }
                            } else {
                                for (int64_t u = 0; u < wq; u++) {
                                    const int64_t ix = u * sw + rx - left;
                                    drow[u] = (ix >= 0 && ix < w) ? src[ix] : 0.f;
                                }
                            }
                        }
                    }
            }
#pragma omp parallel num_threads(threads_) if (threads_ > 1)
            {
#ifdef _OPENMP
                float *row = rows + omp_get_thread_num() * width;
#else
                float *row = rows;
#endif
                /* (block, out channel) pairs, block-major: a thread's consecutive channels reuse the
                   same input rows */
#pragma omp for schedule(static)
                for (int64_t job = 0; job < blocks * cout; job++) {
                    const int64_t b = job / cout, k = job % cout;
                    const int64_t oy0 = b * block, count = (oy0 + block <= out_h ? block : out_h - oy0);
                    gather_axpy(row, q + oy0 * wq, offsets, 1, vv, ip[k], ip[k + 1], round_up8(count * wq), bb ? bb[k] : 0.f);
                    float *dst = oi + (k * out_h + oy0) * out_w;
                    for (int64_t y = 0; y < count; y++) memcpy(dst + y * out_w, row + y * wq, (size_t)out_w * sizeof(float));
                }
            }
        }
        Py_END_ALLOW_THREADS;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyThread_release_lock(scratch_lock);
    free(offsets);
    if (have_bias && bias.obj) PyBuffer_Release(&bias);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&cin_of);
    PyBuffer_Release(&ky_of);
    PyBuffer_Release(&kx_of);
    PyBuffer_Release(&vals);
    return result;
}

/* ------------------------------------------------------------------------------------------------ */
/* CSR times dense                                                                                  */
/* ------------------------------------------------------------------------------------------------ */

/* csr_matmul(indptr, cols, vals, x, out, bias_or_None, rows, width, ldx, threads):
   out[r, 0:width] (row stride ldx) = bias[r] + sum vals * x[cols, 0:width] (row stride ldx). */
static PyObject *py_csr_matmul(PyObject *self, PyObject *args) {
    Py_buffer indptr, cols, vals, x, out;
    PyObject *bias_obj;
    long long rows, width, ldx;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*OLLLi", &indptr, &cols, &vals, &x, &out, &bias_obj, &rows, &width, &ldx, &threads))
        return NULL;
    Py_buffer bias = {0};
    int have_bias = bias_obj != Py_None;
    PyObject *result = NULL;
    if (have_bias && PyObject_GetBuffer(bias_obj, &bias, PyBUF_SIMPLE) != 0) goto done;
    {
        const int32_t *ip = indptr.buf, *cc = cols.buf;
        const float *vv = vals.buf, *xx = x.buf, *bb = have_bias ? bias.buf : NULL;
        float *oo = out.buf;
        const int threads_ = thread_count(threads);
        Py_BEGIN_ALLOW_THREADS;
        if (width == 1) {
#pragma omp parallel for num_threads(threads_) schedule(static) if (threads_ > 1)
            for (int64_t r = 0; r < rows; r++)
                oo[r * ldx] = (bb ? bb[r] : 0.f) + gather_dot(xx, cc, vv, ip[r], ip[r + 1]);
        } else {
#pragma omp parallel for num_threads(threads_) schedule(static) if (threads_ > 1)
            for (int64_t r = 0; r < rows; r++)
                gather_axpy(oo + r * ldx, xx, cc, ldx, vv, ip[r], ip[r + 1], width, bb ? bb[r] : 0.f);
        }
        Py_END_ALLOW_THREADS;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_bias && bias.obj) PyBuffer_Release(&bias);
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&cols);
    PyBuffer_Release(&vals);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* spmv_shared(indptr, cols_u16, codes_u8, table, x, out, bias_or_None, rows, threads):
   out[r] = bias[r] + sum table[codes] * x[cols], for a layer at batch 1. A product at batch 1
   streams every non-zero once and does one multiply with it, so it is bound by the bytes per
   non-zero: 16-bit columns and an 8-bit index into the layer's shared values (the quantizer's
   codebook: a decoded file has at most 2^bits distinct weights per layer) are 3 bytes against
   the 8 of a float value and an int32 column. */
static PyObject *py_spmv_shared(PyObject *self, PyObject *args) {
    Py_buffer indptr, cols, codes, table, x, out;
    PyObject *bias_obj;
    long long rows;
    int threads;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*OLi", &indptr, &cols, &codes, &table, &x, &out, &bias_obj, &rows, &threads))
        return NULL;
    Py_buffer bias = {0};
    int have_bias = bias_obj != Py_None;
    PyObject *result = NULL;
    if (have_bias && PyObject_GetBuffer(bias_obj, &bias, PyBUF_SIMPLE) != 0) goto done;
    {
        const int32_t *ip = indptr.buf;
        const uint16_t *cc = cols.buf;
        const uint8_t *kk = codes.buf;
        const float *tab = table.buf, *xx = x.buf, *bb = have_bias ? bias.buf : NULL;
        float *oo = out.buf;
        const int threads_ = thread_count(threads);
        Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel for num_threads(threads_) schedule(static) if (threads_ > 1)
        for (int64_t r = 0; r < rows; r++) {
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            int64_t nz = ip[r];
            const int64_t stop = ip[r + 1];
            for (; nz + 4 <= stop; nz += 4) {
                s0 += tab[kk[nz]] * xx[cc[nz]];
                s1 += tab[kk[nz + 1]] * xx[cc[nz + 1]];
                s2 += tab[kk[nz + 2]] * xx[cc[nz + 2]];
                s3 += tab[kk[nz + 3]] * xx[cc[nz + 3]];
            }
            for (; nz < stop; nz++) s0 += tab[kk[nz]] * xx[cc[nz]];
            oo[r] = (bb ? bb[r] : 0.f) + ((s0 + s1) + (s2 + s3));
        }
        Py_END_ALLOW_THREADS;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_bias && bias.obj) PyBuffer_Release(&bias);
    PyBuffer_Release(&indptr);
    PyBuffer_Release(&cols);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&table);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* ------------------------------------------------------------------------------------------------ */
/* Max pooling and local response normalisation: not sparse, but once the convolutions are sparse  */
/* they are a third of AlexNet's time and a sixth of ResNet-18's in PyTorch's eager kernels.        */
/* ------------------------------------------------------------------------------------------------ */

/* max_pool2d(x, out, planes, h, w, kh, kw, sh, sw, ph, pw, out_h, out_w, threads): dilation 1;
   windows reaching past the input (padding, ceil mode) take the max over their inside part. */
static PyObject *py_max_pool2d(PyObject *self, PyObject *args) {
    Py_buffer x, out;
    long long planes, h, w, kh, kw, sh, sw, ph, pw, out_h, out_w;
    int threads;
    if (!PyArg_ParseTuple(args, "y*w*LLLLLLLLLLLi", &x, &out, &planes, &h, &w, &kh, &kw, &sh, &sw, &ph, &pw, &out_h, &out_w, &threads))
        return NULL;
    const float *xs = x.buf;
    float *os = out.buf;
    const int threads_ = thread_count(threads);
    float *rowmax = NULL;
    if (posix_memalign((void **)&rowmax, 64, (size_t)threads_ * (size_t)(w + 8) * sizeof(float)) != 0) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel num_threads(threads_) if (threads_ > 1)
    {
#ifdef _OPENMP
        float *rm = rowmax + omp_get_thread_num() * (w + 8);
#else
        float *rm = rowmax;
#endif
#pragma omp for schedule(static)
        for (int64_t job = 0; job < planes * out_h; job++) {
            const int64_t plane = job / out_h, oy = job % out_h;
            int64_t y0 = oy * sh - ph, y1 = y0 + kh;
            if (y0 < 0) y0 = 0;
            if (y1 > h) y1 = h;
            const float *src = xs + plane * h * w;
            /* the max over the window's rows, for every column (vectorised), then along x */
            memcpy(rm, src + y0 * w, (size_t)w * sizeof(float));
            for (int64_t y = y0 + 1; y < y1; y++) {
                const float *row = src + y * w;
                for (int64_t u = 0; u < w; u++) rm[u] = row[u] > rm[u] ? row[u] : rm[u];
            }
            float *dst = os + (plane * out_h + oy) * out_w;
            for (int64_t ox = 0; ox < out_w; ox++) {
                int64_t x0 = ox * sw - pw, x1 = x0 + kw;
                if (x0 < 0) x0 = 0;
                if (x1 > w) x1 = w;
                float best = rm[x0];
                for (int64_t u = x0 + 1; u < x1; u++) best = rm[u] > best ? rm[u] : best;
                dst[ox] = best;
            }
        }
    }
    Py_END_ALLOW_THREADS;
    free(rowmax);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* local_response_norm(x, out, n, c, hw, size, alpha, beta, k, threads), as
   torch.nn.functional.local_response_norm on [N, C, H, W]:
   out = x / (k + alpha / size * sum over channels c - size/2 .. c + (size-1)/2 of x^2) ^ beta.
   Chunks of pixels that stay in L1, every channel's window summed in them. */
#define LRN_CHUNK 256
static PyObject *py_local_response_norm(PyObject *self, PyObject *args) {
    Py_buffer x, out;
    long long n, c, hw, size;
    double alpha, beta, k;
    int threads;
    if (!PyArg_ParseTuple(args, "y*w*LLLLdddi", &x, &out, &n, &c, &hw, &size, &alpha, &beta, &k, &threads)) return NULL;
    const float *xs = x.buf;
    float *os = out.buf;
    const int threads_ = thread_count(threads);
    const int64_t chunks = (hw + LRN_CHUNK - 1) / LRN_CHUNK;
    const int64_t before = size / 2, after = (size - 1) / 2;
    const float scale = (float)(alpha / (double)size), kf = (float)k, bf = (float)beta;
    const int three_quarters = beta == 0.75;
    Py_BEGIN_ALLOW_THREADS;
#pragma omp parallel for num_threads(threads_) schedule(static) if (threads_ > 1)
    for (int64_t job = 0; job < n * chunks; job++) {
        const int64_t img = job / chunks, p0 = (job % chunks) * LRN_CHUNK;
        const int64_t len = p0 + LRN_CHUNK <= hw ? LRN_CHUNK : hw - p0;
        const float *xi = xs + img * c * hw + p0;
        float *oi = os + img * c * hw + p0;
        float sum[LRN_CHUNK];
        /* each channel's window summed afresh (size products per value): a running sum would
           drift by rounding over hundreds of channels */
        for (int64_t ch = 0; ch < c; ch++) {
            for (int64_t q = 0; q < len; q++) sum[q] = 0.f;
            const int64_t lo = ch - before < 0 ? 0 : ch - before, hi = ch + after < c ? ch + after : c - 1;
            for (int64_t j = lo; j <= hi; j++) {
                const float *a = xi + j * hw;
                for (int64_t q = 0; q < len; q++) sum[q] += a[q] * a[q];
            }
            const float *a = xi + ch * hw;
            float *b = oi + ch * hw;
            if (three_quarters) {
                for (int64_t q = 0; q < len; q++) {
                    const float t = kf + scale * sum[q];
                    const float r = 1.0f / sqrtf(t); /* t^-0.75 = t^-0.5 * t^-0.25 */
                    b[q] = a[q] * r * sqrtf(r);
                }
            } else {
                for (int64_t q = 0; q < len; q++) b[q] = a[q] * powf(kf + scale * sum[q], -bf);
            }
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *py_features(PyObject *self, PyObject *args) {
#ifdef JS_AVX
    const char *simd = "avx+fma";
#else
    const char *simd = "portable";
#endif
#ifdef _OPENMP
    int openmp = 1;
#else
    int openmp = 0;
#endif
    return Py_BuildValue("{s:s,s:O}", "simd", simd, "openmp", openmp ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"winograd_conv", py_winograd_conv, METH_VARARGS, "Sparse Winograd convolution (see _compiled.py)."},
    {"direct_conv", py_direct_conv, METH_VARARGS, "Direct sparse convolution (see _compiled.py)."},
    {"csr_matmul", py_csr_matmul, METH_VARARGS, "CSR times dense (see _compiled.py)."},
    {"spmv_shared", py_spmv_shared, METH_VARARGS, "CSR with shared values times a vector (see _compiled.py)."},
    {"max_pool2d", py_max_pool2d, METH_VARARGS, "Max pooling (see nn/fast.py)."},
    {"local_response_norm", py_local_response_norm, METH_VARARGS, "Local response normalisation (see nn/fast.py)."},
    {"features", py_features, METH_NOARGS, "Build features: SIMD level and OpenMP."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_csparse", "Sparse CPU kernels of jointsparse.", -1, methods};

PyMODINIT_FUNC PyInit__csparse(void) {
    scratch_lock = PyThread_allocate_lock();
    if (!scratch_lock) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
