/* A few-row fp32 GEMM for x86-64 CPUs with AVX2 and FMA: y[M][N] = x[M][K] W^T + bias.
 *
 * Why: decoding a batch of a few requests multiplies a few rows by every weight of the model, so
 * a step is bound by reading the weights. MKL's and oneDNN's kernels leave half of the memory
 * bandwidth of our AMD EPYC unused at 1-64 rows (BENCHMARKS.md, "Serving throughput"). This
 * kernel reads each weight once per call, from a layout made for it, with software prefetch.
 * inference/small_gemm.py compiles it on first use and falls back to oneDNN when it cannot.
 *
 * Layout: the weight (N x K, row-major as in nn.Linear) is packed into panels of 16 output
 * columns, P[p][k][c] = W[16p + c][k], zero-padded to a multiple of 16 columns. A panel is
 * streamed in chunks of KC values of k; each chunk (8 KB) stays in L1 while blocks of 4 rows use
 * it, so the weights are read from memory once whatever M is. 4 rows x 16 columns = 8 AVX2
 * accumulators. Threads (OpenMP: the runtime torch already loaded) split the panels.
 */
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#define PANEL 16
#define KC 128          /* k values per chunk: 8 KB of panel */
#define PREFETCH 1024   /* floats ahead in the panel stream (4 KB) */
#define MAX_ROWS 256    /* the caller sends more rows elsewhere */

/* Weights in bf16 (`tuneforge_small_gemm_bf16w`): the same GEMM with the panels stored in bf16
 * (the top 16 bits of an fp32), half the bytes read per decode step, which is what bounds it at
 * few rows. Each weight is widened to the fp32 it stands for (a 16-bit shift, exact) and
 * multiplied in fp32 with the fp32 input, so the result is what an fp32 GEMM on the bf16-rounded
 * weight gives: for a model whose checkpoint is bf16 (most of the hub's), the fp32 kernel's
 * result to the bit (the same products in the same order). Needs AVX2 only, no bf16 units.
 * Each k's 16 bf16 values are stored in the order 0-3, 8-11, 4-7, 12-15, so that interleaving a
 * 256-bit load with zeros (vpunpcklwd/vpunpckhwd, which work within 128-bit lanes) yields
 * columns 0-7 and 8-15 as fp32. A bf16 chunk holds twice the k values of an fp32 one (8 KB). */
#define KC16 256

/* Columns 0-7 and 8-15 of a panel at k, as fp32. `bf16` is a constant where this is inlined, so
 * each kernel gets its own code, with no branch in the loop. */
static inline void weights(const void *p, int k, int bf16, __m256 *w0, __m256 *w1) {
    if (bf16) {
        __m256i raw = _mm256_loadu_si256((const __m256i *)((const unsigned short *)p + PANEL * k));
        __m256i zero = _mm256_setzero_si256();
        *w0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, raw));
        *w1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, raw));
    } else {
        *w0 = _mm256_loadu_ps((const float *)p + PANEL * k);
        *w1 = _mm256_loadu_ps((const float *)p + PANEL * k + 8);
    }
}

static inline void prefetch(const void *p, int k, int bf16) {
    /* PREFETCH floats (4 KB) ahead in the panel stream, whatever the element size */
    const char *at = (const char *)p + (size_t)(PANEL * k) * (bf16 ? 2 : 4) + 4 * PREFETCH;
    _mm_prefetch(at, _MM_HINT_T0);
}

/* rows (1-4) x 16 columns over k in [k0, k1). The first chunk starts from the bias (or zero),
 * later chunks from what y holds. */
static inline void chunk(int k0, int k1, const float *x, int ldx, const void *p, int bf16,
                         const float *bias, float *y, int ldy, int rows, int first, int prefetching) {
    if (rows == 4) {
        __m256 a00, a01, a10, a11, a20, a21, a30, a31;
        if (first) {
            a00 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
            a01 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
            a10 = a20 = a30 = a00;
            a11 = a21 = a31 = a01;
        } else {
            a00 = _mm256_loadu_ps(y);           a01 = _mm256_loadu_ps(y + 8);
            a10 = _mm256_loadu_ps(y + ldy);     a11 = _mm256_loadu_ps(y + ldy + 8);
            a20 = _mm256_loadu_ps(y + 2 * ldy); a21 = _mm256_loadu_ps(y + 2 * ldy + 8);
            a30 = _mm256_loadu_ps(y + 3 * ldy); a31 = _mm256_loadu_ps(y + 3 * ldy + 8);
        }
        const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
        for (int k = k0; k < k1; k++) {
            if (prefetching) prefetch(p, k, bf16);
            __m256 w0, w1;
            weights(p, k, bf16, &w0, &w1);
            __m256 b = _mm256_broadcast_ss(x0 + k);
            a00 = _mm256_fmadd_ps(b, w0, a00); a01 = _mm256_fmadd_ps(b, w1, a01);
            b = _mm256_broadcast_ss(x1 + k);
            a10 = _mm256_fmadd_ps(b, w0, a10); a11 = _mm256_fmadd_ps(b, w1, a11);
            b = _mm256_broadcast_ss(x2 + k);
            a20 = _mm256_fmadd_ps(b, w0, a20); a21 = _mm256_fmadd_ps(b, w1, a21);
            b = _mm256_broadcast_ss(x3 + k);
            a30 = _mm256_fmadd_ps(b, w0, a30); a31 = _mm256_fmadd_ps(b, w1, a31);
        }
        _mm256_storeu_ps(y, a00);           _mm256_storeu_ps(y + 8, a01);
        _mm256_storeu_ps(y + ldy, a10);     _mm256_storeu_ps(y + ldy + 8, a11);
        _mm256_storeu_ps(y + 2 * ldy, a20); _mm256_storeu_ps(y + 2 * ldy + 8, a21);
        _mm256_storeu_ps(y + 3 * ldy, a30); _mm256_storeu_ps(y + 3 * ldy + 8, a31);
        return;
    }
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        __m256 c0, c1;
        if (first) {
            c0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
            c1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
        } else {
            c0 = _mm256_loadu_ps(yr);
            c1 = _mm256_loadu_ps(yr + 8);
        }
        for (int k = k0; k < k1; k++) {
            if (prefetching && r == 0) prefetch(p, k, bf16);
            __m256 w0, w1;
            weights(p, k, bf16, &w0, &w1);
            __m256 b = _mm256_broadcast_ss(xr + k);
            c0 = _mm256_fmadd_ps(b, w0, c0);
            c1 = _mm256_fmadd_ps(b, w1, c1);
        }
        _mm256_storeu_ps(yr, c0);
        _mm256_storeu_ps(yr + 8, c1);
    }
}

/* One panel of 16 output columns: all M rows, chunk by chunk of k. */
static inline void panel_gemm(int p, int M, int N, int K, const float *x, const void *packed,
                              int bf16, const float *bias, float *y) {
    int kc = bf16 ? KC16 : KC;
    const char *panel = (const char *)packed + (size_t)p * PANEL * K * (bf16 ? 2 : 4);
    const float *panel_bias = bias ? bias + PANEL * p : NULL;
    int columns = N - PANEL * p < PANEL ? N - PANEL * p : PANEL;
    /* A last, partial panel is computed into a local buffer and copied out. */
    float tail[MAX_ROWS * PANEL];
    float *out = columns == PANEL ? y + PANEL * p : tail;
    int ldy = columns == PANEL ? N : PANEL;
    for (int k0 = 0; k0 < K; k0 += kc) {
        int k1 = k0 + kc < K ? k0 + kc : K;
        for (int m = 0; m < M; m += 4) {
            int rows = M - m < 4 ? M - m : 4;
            chunk(k0, k1, x + (size_t)m * K, K, panel, bf16, panel_bias, out + (size_t)m * ldy,
                  ldy, rows, k0 == 0, m == 0);
        }
    }
    if (columns < PANEL)
        for (int m = 0; m < M; m++)
            memcpy(y + (size_t)m * N + PANEL * p, tail + m * PANEL, columns * sizeof(float));
}

/* The two entry points differ only in the constant `bf16` they inline `panel_gemm` with (each
 * gets code without the other's loads); OpenMP threads split the panels. */

/* x: M x K (row-major, contiguous); packed: ceil(N/16) x K x 16; bias: ceil(N/16)*16 floats or
 * NULL; y: M x N (row-major, contiguous). Returns 0, or -1 when M is out of range. */
int tuneforge_small_gemm(int M, int N, int K, const float *x, const float *packed,
                         const float *bias, float *y, int threads) {
    if (M < 1 || M > MAX_ROWS) return -1;
    int panels = (N + PANEL - 1) / PANEL;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int p = 0; p < panels; p++) panel_gemm(p, M, N, K, x, packed, 0, bias, y);
    return 0;
}

/* As tuneforge_small_gemm, with packed: ceil(N/16) x K x 16 bf16 values (uint16), in the order
 * above. */
int tuneforge_small_gemm_bf16w(int M, int N, int K, const float *x, const unsigned short *packed,
                               const float *bias, float *y, int threads) {
    if (M < 1 || M > MAX_ROWS) return -1;
    int panels = (N + PANEL - 1) / PANEL;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int p = 0; p < panels; p++) panel_gemm(p, M, N, K, x, packed, 1, bias, y);
    return 0;
}
