/* Bit-packed 1-bit convolution for the vistream binary runtime (models/binary/packed.py).
 *
 * out[n, o, y, x] = alpha[o] * sum_{c, ky, kx valid} sign(in[n, c, y*s - p + ky, x*s - p + kx])
 *                                                      * sign(w[o, c, ky, kx])
 * with sign(v) = +1 for v >= 0 and -1 otherwise (NaN -> -1, -0.0 -> +1, as torch.where(v >= 0)),
 * and *zero* padding: taps outside the image add nothing. That is exactly
 * conv2d(hard_sign(x), W_b, stride, padding) * alpha of models/binary/layers.py.
 *
 * How: the activation signs are packed once per call into 64-bit words along the channels,
 * layout [n][h][w][Cw] (bit c%64 of word c/64 set when the value is negative; bits past C stay
 * 0). No float im2col exists: the GEMM reads the packed words of each tap straight from that
 * array. Weights arrive pre-packed the same way, blocked by OB=16 output channels:
 * [O/16][k*k][Cw][16]. For one output position and 16 output channels, every activation word
 * is XORed with 16 weight words; the popcount of the XOR counts disagreeing signs, so for the
 * valid taps dot = n_valid - 2 * popcount. Padded channel bits are 0 in both operands and
 * therefore never counted; padded (out-of-image) taps are skipped and not counted in n_valid,
 * which is what zero padding means. The integer is exact, converted to float and multiplied
 * by alpha[o] once, which is the same single float32 rounding torch performs.
 *
 * AVX2 path: the 16 output channels sit in four 256-bit registers, one 64-bit lane each; the
 * activation word is broadcast, XORed, and counted with the nibble-lookup (vpshufb) popcount
 * into byte counters, which vpsadbw folds into per-lane 64-bit sums at most every 31 words
 * (8 * 31 < 256, so bytes never overflow). Positions whose window lies inside the image take a
 * fast path (offset table, one contiguous weight run, vector epilogue); border positions loop
 * over their valid taps only. Without AVX2 a scalar popcount loop does the same.
 * (Tried and dropped, no faster here: a Harley-Seal carry-save tree for long windows, and a
 * position-major row buffer for the NCHW stores.)
 *
 * Also here: an exact max-pooling kernel (see below), because torch's NCHW max_pool2d is one
 * of the slowest ops of a ResNet-18 at batch 1.
 *
 * Threads: a small persistent pthread pool (or, in a -fopenmp build, torch's own OpenMP
 * threads; see pool_run for why that is not the default), dynamic scheduling from atomic
 * counters: packing tasks are (image, chunk of positions, channel word), GEMM tasks (image,
 * output block, output row); the GEMM starts when every packing task is complete. The GIL is
 * released meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <time.h>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#define OB 16 /* output channels per weight block (four AVX2 registers of 4 x uint64) */
#define MAX_THREADS 64
/* Every packed 64-bit word is stored as NIB = 2 words: its low nibbles (bits 0-3 of each
 * byte) and its high nibbles shifted down, in that order. popcount(a ^ w) is then the sum of
 * two nibble-table lookups of lo(a) ^ lo(w) and hi(a) ^ hi(w), which saves the AND/shift/AND
 * that splitting the XOR on the fly costs for every register: 6 vector ops per 256 bits
 * instead of 8. Activations are split once when they are packed, weights once at load. */
#define NIB 2
#define NIB_MASK 0x0f0f0f0f0f0f0f0fULL

typedef struct {
    const float *x;       /* (N, C, H, W) float32 */
    const uint64_t *wpk;  /* [nob][k*k][Cw][NIB][OB] */
    const float *alpha;   /* (O,) */
    float *out;           /* (N, O, Ho, Wo) float32 */
    const float *bn_a, *bn_b; /* optional (O,): out = fma(conv, bn_a, bn_b), torch's eval BN */
    const float *res;     /* optional (N, O, Ho, Wo): added last, as `bn(conv(x)) + shortcut` */
    uint64_t *act;        /* [N][H][W][Cw][NIB] packed signs */
    int N, C, H, W, O, k, stride, pad, Ho, Wo, Cw, nob;
    int nthreads;
    long pack_tasks;
    const int *off; /* word offsets of a full window, k*k*Cw entries */
    pthread_t caller;
    /* work counters, one cache line each: the two cores claim and report work on them all
     * the time, and counters sharing a line would bounce it on every update */
    _Alignas(64) _Atomic long next_pack;
    _Alignas(64) _Atomic long packed;
    _Alignas(64) _Atomic long next_task;
    _Alignas(64) _Atomic long computed;
    _Alignas(64) char end_pad;
} conv_t;

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

#define PACK_CHUNK 256 /* positions packed per task (the scratch row fits on the stack) */

/* Pack task t of the flattened (n, chunk of PACK_CHUNK positions, word cw) index. For each
 * channel the inner loop runs over contiguous positions of one plane, which gcc vectorises. */
static void pack_task(const conv_t *P, long t) {
    const int C = P->C, Cw = P->Cw;
    const long HW = (long)P->H * P->W, nchunk = (HW + PACK_CHUNK - 1) / PACK_CHUNK;
    uint64_t tmp[PACK_CHUNK];
    const int cw = (int)(t % Cw);
    const long n = t / Cw / nchunk, p0 = (t / Cw % nchunk) * PACK_CHUNK;
    const int np = (int)(HW - p0 < PACK_CHUNK ? HW - p0 : PACK_CHUNK);
    uint64_t *dst = P->act + ((size_t)n * HW + p0) * Cw * NIB;
    const int cend = imin(64, C - cw * 64);
    memset(tmp, 0, sizeof(uint64_t) * (size_t)np);
    for (int j = 0; j < cend; j++) {
        const float *xr = P->x + ((size_t)n * C + (size_t)cw * 64 + j) * HW + p0;
        /* !(v >= 0) is 1 for negatives and NaN, 0 for +-0: hard_sign's convention. */
        for (int i = 0; i < np; i++) tmp[i] |= (uint64_t)(!(xr[i] >= 0.0f)) << j;
    }
    /* stored as nibble planes: the low and the high nibble of every byte (see NIB) */
    for (int i = 0; i < np; i++) {
        dst[((size_t)i * Cw + cw) * NIB] = tmp[i] & NIB_MASK;
        dst[((size_t)i * Cw + cw) * NIB + 1] = (tmp[i] >> 4) & NIB_MASK;
    }
}

#ifdef __AVX2__
/* per-byte popcount of (a ^ w) from the nibble planes of both operands */
static inline __m256i xor_count(__m256i alo, __m256i ahi, const __m256i *w, __m256i lut) {
    const __m256i lo = _mm256_xor_si256(alo, _mm256_loadu_si256(w));
    const __m256i hi = _mm256_xor_si256(ahi, _mm256_loadu_si256(w + OB / 4));
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
#endif

/* popcount(a ^ w) summed over the valid taps of one output position, for OB channels. */
static inline void dot_block(const conv_t *P, const uint64_t *A, const uint64_t *Wb, int iy0, int ix0,
                             int ky0, int ky1, int kx0, int kx1, uint64_t acc[OB]) {
    const int Cw = P->Cw, k = P->k, W = P->W;
    const int nw = (kx1 - kx0) * Cw;
#ifdef __AVX2__
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i zero = _mm256_setzero_si256();
    __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero;
    __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    int cnt = 0;
    for (int ky = ky0; ky < ky1; ky++) {
        const uint64_t *a = A + ((size_t)(iy0 + ky) * W + (ix0 + kx0)) * Cw * NIB;
        const uint64_t *w = Wb + ((size_t)(ky * k + kx0) * Cw) * NIB * OB;
        for (int i = 0; i < nw; i++) {
            const __m256i alo = _mm256_set1_epi64x((long long)a[(size_t)i * NIB]);
            const __m256i ahi = _mm256_set1_epi64x((long long)a[(size_t)i * NIB + 1]);
            const __m256i *wv = (const __m256i *)(w + (size_t)i * NIB * OB);
            b0 = _mm256_add_epi8(b0, xor_count(alo, ahi, wv + 0, lut));
            b1 = _mm256_add_epi8(b1, xor_count(alo, ahi, wv + 1, lut));
            b2 = _mm256_add_epi8(b2, xor_count(alo, ahi, wv + 2, lut));
            b3 = _mm256_add_epi8(b3, xor_count(alo, ahi, wv + 3, lut));
            if (++cnt == 31) { /* byte counters hold at most 8 * 31 = 248 */
                s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(b0, zero));
                s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(b1, zero));
                s2 = _mm256_add_epi64(s2, _mm256_sad_epu8(b2, zero));
                s3 = _mm256_add_epi64(s3, _mm256_sad_epu8(b3, zero));
                b0 = b1 = b2 = b3 = zero;
                cnt = 0;
            }
        }
    }
    s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(b0, zero));
    s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(b1, zero));
    s2 = _mm256_add_epi64(s2, _mm256_sad_epu8(b2, zero));
    s3 = _mm256_add_epi64(s3, _mm256_sad_epu8(b3, zero));
    _mm256_storeu_si256((__m256i *)(acc + 0), s0);
    _mm256_storeu_si256((__m256i *)(acc + 4), s1);
    _mm256_storeu_si256((__m256i *)(acc + 8), s2);
    _mm256_storeu_si256((__m256i *)(acc + 12), s3);
#else
    for (int j = 0; j < OB; j++) acc[j] = 0;
    for (int ky = ky0; ky < ky1; ky++) {
        const uint64_t *a = A + ((size_t)(iy0 + ky) * W + (ix0 + kx0)) * Cw * NIB;
        const uint64_t *w = Wb + ((size_t)(ky * k + kx0) * Cw) * NIB * OB;
        for (int i = 0; i < nw; i++) {
            const uint64_t av = a[(size_t)i * NIB] | (a[(size_t)i * NIB + 1] << 4);
            const uint64_t *wi = w + (size_t)i * NIB * OB;
            for (int j = 0; j < OB; j++)
                acc[j] += (uint64_t)__builtin_popcountll(av ^ (wi[j] | (wi[OB + j] << 4)));
        }
    }
#endif
}

#ifdef __AVX2__
/* Interior positions (the whole window inside the image): the K = k*k*Cw words of the window
 * are read through a precomputed offset table, the weights are then one contiguous run, and
 * the byte counters are folded every 31 words by chunking (no test inside the loop). The
 * epilogue converts the 16 counts and multiplies by alpha in vector registers; the float
 * multiply is the same IEEE single multiply as the scalar path. */
static inline void dot_full_store(const uint64_t *a0, const uint64_t *Wb, const int *off, int K,
                                  int valid, const float *alpha16, float res[OB]) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i zero = _mm256_setzero_si256();
    __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero;
    for (int i0 = 0; i0 < K; i0 += 31) {
        const int i1 = K - i0 < 31 ? K : i0 + 31;
        __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero;
        for (int i = i0; i < i1; i++) {
            const __m256i alo = _mm256_set1_epi64x((long long)a0[off[i]]);
            const __m256i ahi = _mm256_set1_epi64x((long long)a0[off[i] + 1]);
            const __m256i *wv = (const __m256i *)(Wb + (size_t)i * NIB * OB);
            b0 = _mm256_add_epi8(b0, xor_count(alo, ahi, wv + 0, lut));
            b1 = _mm256_add_epi8(b1, xor_count(alo, ahi, wv + 1, lut));
            b2 = _mm256_add_epi8(b2, xor_count(alo, ahi, wv + 2, lut));
            b3 = _mm256_add_epi8(b3, xor_count(alo, ahi, wv + 3, lut));
        }
        s0 = _mm256_add_epi64(s0, _mm256_sad_epu8(b0, zero));
        s1 = _mm256_add_epi64(s1, _mm256_sad_epu8(b1, zero));
        s2 = _mm256_add_epi64(s2, _mm256_sad_epu8(b2, zero));
        s3 = _mm256_add_epi64(s3, _mm256_sad_epu8(b3, zero));
    }
    /* 64-bit lane counts (< 2^31) -> 8 int32 per register, in output-channel order */
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i c01 = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(s0, even),
                                                  _mm256_permutevar8x32_epi32(s1, even), 0x20);
    const __m256i c23 = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(s2, even),
                                                  _mm256_permutevar8x32_epi32(s3, even), 0x20);
    const __m256i v = _mm256_set1_epi32(valid);
    const __m256i d01 = _mm256_sub_epi32(v, _mm256_slli_epi32(c01, 1));
    const __m256i d23 = _mm256_sub_epi32(v, _mm256_slli_epi32(c23, 1));
    _mm256_storeu_ps(res, _mm256_mul_ps(_mm256_cvtepi32_ps(d01), _mm256_loadu_ps(alpha16)));
    _mm256_storeu_ps(res + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(d23), _mm256_loadu_ps(alpha16 + 8)));
}
#endif

/* The optional fused tail of a Bi-Real unit, `bn(conv(x)) + shortcut(x)`, in torch's own
 * arithmetic: its eval BatchNorm is one fused multiply-add per value with per-channel
 * constants (the caller passes torch's), the residual add one float add (see flush_tile). */
#define TILE_W 64 /* output positions per tile (16 channels x 64 floats = 4 KiB on the stack) */

/* Write a tile of one output row, [16 channels][up to TILE_W positions], to the NCHW output:
 * contiguous runs per channel (instead of 16 stores to 16 planes per position), and the
 * optional unit tail applied there, vectorised along the row. */
static void flush_tile(const conv_t *P, const float *tile, size_t base, size_t plane, int o0, int on,
                       int ox0, int n) {
    for (int j = 0; j < on; j++) {
        const float *src = tile + (size_t)j * TILE_W;
        const size_t at = base + (size_t)j * plane + ox0;
        float *restrict dst = P->out + at;
        const float *restrict r = P->res ? P->res + at : NULL;
        if (P->bn_a) {
            const float a = P->bn_a[o0 + j], b = P->bn_b[o0 + j];
            if (r) {
                for (int i = 0; i < n; i++) dst[i] = fmaf(src[i], a, b) + r[i];
            } else {
                for (int i = 0; i < n; i++) dst[i] = fmaf(src[i], a, b);
            }
        } else if (r) {
            for (int i = 0; i < n; i++) dst[i] = src[i] + r[i];
        } else {
            memcpy(dst, src, sizeof(float) * (size_t)n);
        }
    }
}

/* Output tasks [t0, t1) of the flattened (n, output block, output row) index. */
static void compute_tasks(const conv_t *P, long t0, long t1) {
    const int H = P->H, W = P->W, k = P->k, s = P->stride, pad = P->pad, Cw = P->Cw;
    const int Ho = P->Ho, Wo = P->Wo, O = P->O, C = P->C;
    const size_t plane = (size_t)Ho * Wo;
    uint64_t acc[OB] __attribute__((aligned(32)));
    float alpha16[OB];
    float tile[OB * TILE_W];
#ifdef __AVX2__
    float res[OB];
    const int K = k * k * Cw, full = C * k * k;
#endif
    for (long t = t0; t < t1; t++) {
        const int oy = (int)(t % Ho);
        const long rest = t / Ho;
        const int ob = (int)(rest % P->nob);
        const long n = rest / P->nob;
        const int o0 = ob * OB, on = imin(OB, O - o0);
        const uint64_t *A = P->act + (size_t)n * H * W * Cw * NIB;
        const uint64_t *Wb = P->wpk + (size_t)ob * k * k * Cw * NIB * OB;
        const size_t base = ((size_t)n * O + o0) * plane + (size_t)oy * Wo;
        const int iy0 = oy * s - pad;
        const int ky0 = imax(0, -iy0), ky1 = imin(k, H - iy0);
        for (int j = 0; j < OB; j++) alpha16[j] = j < on ? P->alpha[o0 + j] : 0.0f;
        for (int ox = 0; ox < Wo; ox++) {
            const int ix0 = ox * s - pad, col = ox % TILE_W;
            if (col == 0 && ox > 0) flush_tile(P, tile, base, plane, o0, on, ox - TILE_W, TILE_W);
#ifdef __AVX2__
            if (ky0 == 0 && ky1 == k && ix0 >= 0 && ix0 + k <= W) {
                dot_full_store(A + ((size_t)iy0 * W + ix0) * Cw * NIB, Wb, P->off, K, full, alpha16, res);
                for (int j = 0; j < OB; j++) tile[j * TILE_W + col] = res[j];
                continue;
            }
#endif
            const int kx0 = imax(0, -ix0), kx1 = imin(k, W - ix0);
            const int valid = (ky1 > ky0 && kx1 > kx0) ? C * (ky1 - ky0) * (kx1 - kx0) : 0;
            if (valid) {
                dot_block(P, A, Wb, iy0, ix0, ky0, ky1, kx0, kx1, acc);
            } else {
                memset(acc, 0, sizeof(acc));
            }
            for (int j = 0; j < on; j++) {
                /* exact integer, then one float32 multiply: the same rounding as torch's
                 * conv2d(...) * alpha */
                const float dot = (float)(valid - 2 * (long)acc[j]);
                tile[j * TILE_W + col] = dot * alpha16[j];
            }
        }
        const int last = (Wo - 1) / TILE_W * TILE_W;
        flush_tile(P, tile, base, plane, o0, on, last, Wo - last);
    }
}

/* ------------------------------------------------------------------ threads
 * Work is handed out dynamically: every participant claims small tasks from atomic counters,
 * and the caller itself always participates, so a thread that the OS has not scheduled (the
 * machine may be shared) costs nothing but its absence — the caller then does the work.
 * The threads: OpenMP's (torch's own, see below) or, without OpenMP, a persistent pthread
 * pool: after a job a worker polls ~100 us for the next one (the convs of a network come back
 * to back), yielding the CPU between polls, then sleeps on a condition variable; one job at
 * a time, a caller that finds the pool busy (another Python thread) runs alone. */
typedef void (*job_fn)(void *arg);

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Wait for a condition that another participant makes true soon (it is running a task). */
#define SPIN_UNTIL(cond)                                              \
    do {                                                              \
        unsigned spins_ = 0;                                          \
        while (!(cond)) {                                             \
            if (++spins_ < 256) cpu_relax(); else sched_yield();      \
        }                                                             \
    } while (0)

#ifdef _OPENMP
/* Optional (build with -fopenmp): the workers are then the OpenMP runtime's threads. torch
 * ships its own libgomp with the soname libgomp.so.1 and the dynamic loader reuses an already
 * loaded soname, so after `import torch` these are torch's own intra-op threads and no second
 * pool competes with torch's spinning workers. Not the default: the parallel region ends with
 * a barrier that waits for every thread, and on a shared, oversubscribed machine (2 cores,
 * load 5-6) a descheduled thread made a 0.36 ms conv take 5-11 ms — exactly what happens to
 * torch's own 2-thread convs there — whereas the pthread pool below never waits for a worker
 * that has not started, so it is never slower than one thread. */
static void pool_run(job_fn fn, void *arg, int T) {
    if (T <= 1) {
        fn(arg);
        return;
    }
#pragma omp parallel num_threads(T)
    fn(arg);
}
#else
#define POLL_NS 100000L

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static struct {
    pthread_mutex_t mu;  /* guards sleeping and job publication */
    pthread_cond_t cv;
    pthread_mutex_t busy; /* held by the caller that owns the pool for one job */
    int nworkers;
    pthread_t th[MAX_THREADS];
    unsigned long start_gen[MAX_THREADS + 1];
    _Atomic unsigned long gen;
    _Atomic int open;     /* 1 while the published job may still be joined */
    _Atomic int active;   /* workers inside the job */
    job_fn fn;
    void *arg;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 0};

static void *pool_worker(void *p) {
    const int tid = (int)(intptr_t)p;
    /* the generation current when the creator started us (it publishes the next job only
     * after creating us, but we may first run after that) */
    unsigned long seen = pool.start_gen[tid];
    for (;;) {
        unsigned long g = atomic_load_explicit(&pool.gen, memory_order_acquire);
        if (g == seen) {
            /* poll: a few pause loops, then sched_yield so that runnable threads (torch's own
             * OpenMP workers between our convs, other processes) get this CPU while we wait */
            const long t0 = now_ns();
            unsigned spins = 0;
            while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen) {
                if (++spins < 256) {
                    cpu_relax();
                } else {
                    sched_yield();
                    if (now_ns() - t0 > POLL_NS) break;
                }
            }
        }
        if (g == seen) {
            pthread_mutex_lock(&pool.mu);
            while ((g = atomic_load(&pool.gen)) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
        }
        seen = g;
        atomic_fetch_add(&pool.active, 1);
        if (atomic_load(&pool.open)) pool.fn(pool.arg);
        atomic_fetch_sub(&pool.active, 1);
    }
    return NULL;
}

static void pool_after_fork(void) { /* the child has no workers; start afresh */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pthread_mutex_init(&pool.busy, NULL);
    pool.nworkers = 0;
    atomic_store(&pool.active, 0);
    atomic_store(&pool.open, 0);
}

/* Run fn(arg) on the calling thread and on up to T-1 workers; fn must claim work from shared
 * counters and return only when the job is complete (see conv_job). */
static void pool_run(job_fn fn, void *arg, int T) {
    if (T <= 1 || pthread_mutex_trylock(&pool.busy) != 0) {
        fn(arg);
        return;
    }
    while (pool.nworkers < T - 1) {
        pool.start_gen[pool.nworkers + 1] = atomic_load(&pool.gen);
        if (pthread_create(&pool.th[pool.nworkers + 1], NULL, pool_worker,
                           (void *)(intptr_t)(pool.nworkers + 1)) != 0)
            break;
        pthread_detach(pool.th[pool.nworkers + 1]);
        pool.nworkers++;
    }
    /* (with more workers than T, the extra ones join too; the counters keep that correct) */
    pthread_mutex_lock(&pool.mu);
    pool.fn = fn;
    pool.arg = arg;
    atomic_store(&pool.open, 1);
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    fn(arg);
    /* close the job, then wait for workers still inside it (they only touch *arg until they
     * see that no work is left) */
    atomic_store(&pool.open, 0);
    SPIN_UNTIL(atomic_load(&pool.active) == 0);
    pthread_mutex_unlock(&pool.busy);
}
#endif

static _Atomic long worker_tasks; /* GEMM rows done by pool workers (reported by info()) */

/* Claim the next run [t, *end) of tasks below `total`, or return -1. Guided scheduling: a
 * claim takes 1/(2T) of what is left, so there are few claims (each one moves a cache line
 * between cores, which costs as much as a small task) and the last ones are small enough to
 * balance the threads. */
static long claim(_Atomic long *next, long total, int T, long *end) {
    long t = atomic_load_explicit(next, memory_order_relaxed);
    for (;;) {
        if (t >= total) return -1;
        long c = (total - t) / (2L * T);
        if (c < 1) c = 1;
        if (atomic_compare_exchange_weak(next, &t, t + c)) {
            *end = t + c;
            return t;
        }
    }
}

/* One participant: claim packing tasks, wait until packing is complete, claim GEMM rows. */
static void conv_job(void *arg) {
    conv_t *P = (conv_t *)arg;
    const int is_worker = P->caller != pthread_self();
    const long ptasks = P->pack_tasks, tasks = (long)P->N * P->nob * P->Ho;
    long t, end, mine = 0;
    while ((t = atomic_fetch_add(&P->next_pack, 1)) < ptasks) {
        pack_task(P, t);
        atomic_fetch_add(&P->packed, 1);
    }
    SPIN_UNTIL(atomic_load(&P->packed) >= ptasks);
    while ((t = claim(&P->next_task, tasks, P->nthreads, &end)) >= 0) {
        compute_tasks(P, t, end);
        mine += end - t;
        atomic_fetch_add(&P->computed, end - t);
    }
    if (is_worker && mine) atomic_fetch_add(&worker_tasks, mine);
    SPIN_UNTIL(atomic_load(&P->computed) >= tasks);
}

/* ------------------------------------------------------------------ max pooling
 * Max pooling is exact whatever the implementation, so the runtime runs the network's float
 * MaxPool2d here too (torch's NCHW max_pool2d is slow for one image). torch visits a window row
 * by row with the rule `v > m || isnan(v)` from m = -inf, skipping padded positions. That fold
 * returns the last NaN of the window if there is one, else the first element equal to the
 * maximum (which decides the sign of a zero) — and the same holds when each window row is
 * folded first and the row results are then folded in row order. So the kernel is separable:
 * a horizontal pass (every input row -> its Wo row maxima, each computed once although two
 * output rows share it) and a vertical pass over those, both plain vectorisable loops. */
typedef struct {
    const float *x;
    float *y;
    int planes, H, W, k, s, p, Ho, Wo;
    int average; /* 0: max pooling, 1: average pooling (see avgpool_plane) */
    int nhwc, C;  /* max pooling of a channels-last input (see maxpool_nhwc_row) */
    _Atomic long next, finished;
} pool_t;

/* m[i] = torch's running max after seeing v[i] (the `|` keeps it branch-free, vectorisable) */
static inline void max_step(float *restrict m, const float *restrict v, int n) {
    for (int i = 0; i < n; i++) {
        const float a = v[i], c = m[i];
        m[i] = ((a > c) | (a != a)) ? a : c;
    }
}

/* h[ox] = fold over kx of row[ox * s - p + kx], the valid taps only. Outputs whose window is
 * inside the row keep the running max in a register (with k and s compile-time constants
 * where row_max_ks is inlined, gcc vectorises that loop); the few others check every tap. */
static inline void row_max_ks(const float *restrict row, float *restrict h, int W, int k, int s, int p,
                              int Wo) {
    const int lo = imin(Wo, (p + s - 1) / s), hi = W + p - k < 0 ? 0 : imin(Wo, (W + p - k) / s + 1);
    for (int ox = 0; ox < Wo; ox++) {
        if (ox == lo && hi > lo) {
            for (; ox < hi; ox++) {
                const float *v = row + ((long)ox * s - p);
                float m = -INFINITY;
                for (int kx = 0; kx < k; kx++) m = ((v[kx] > m) | (v[kx] != v[kx])) ? v[kx] : m;
                h[ox] = m;
            }
            if (ox >= Wo) break;
        }
        float m = -INFINITY;
        for (int kx = 0; kx < k; kx++) {
            const int ix = ox * s - p + kx;
            if (ix >= 0 && ix < W) m = ((row[ix] > m) | (row[ix] != row[ix])) ? row[ix] : m;
        }
        h[ox] = m;
    }
}

static void row_max(const float *restrict row, float *restrict h, int W, int k, int s, int p, int Wo) {
    if (k == 3 && s == 2) row_max_ks(row, h, W, 3, 2, p, Wo); /* ResNet stems */
    else if (k == 3 && s == 1) row_max_ks(row, h, W, 3, 1, p, Wo);
    else if (k == 2 && s == 2) row_max_ks(row, h, W, 2, 2, p, Wo);
    else row_max_ks(row, h, W, k, s, p, Wo);
}

static void maxpool_plane(const pool_t *Q, long plane, float *restrict hbuf) {
    const int H = Q->H, W = Q->W, k = Q->k, s = Q->s, p = Q->p, Ho = Q->Ho, Wo = Q->Wo;
    const float *x = Q->x + (size_t)plane * H * W;
    float *y = Q->y + (size_t)plane * Ho * Wo;
    for (int iy = 0; iy < H; iy++) row_max(x + (size_t)iy * W, hbuf + (size_t)iy * Wo, W, k, s, p, Wo);
    for (int oy = 0; oy < Ho; oy++) {
        float *m = y + (size_t)oy * Wo;
        for (int ox = 0; ox < Wo; ox++) m[ox] = -INFINITY;
        for (int ky = 0; ky < k; ky++) {
            const int iy = oy * s - p + ky;
            if (iy >= 0 && iy < H) max_step(m, hbuf + (size_t)iy * Wo, Wo);
        }
    }
}

/* Average pooling without padding (the down-sampling shortcuts' AvgPool2d(2)), exactly as
 * torch's NCHW CPU kernel computes it: a float sum from 0 over the window, row by row, then
 * one division by the window size. */
static inline void avg_row_ks(const float *restrict x, float *restrict y, int W, int k, int s, int Wo,
                              float area) {
    for (int ox = 0; ox < Wo; ox++) {
        float sum = 0.0f;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) sum += x[(size_t)ky * W + (size_t)ox * s + kx];
        y[ox] = sum / area;
    }
}

static void avgpool_plane(const pool_t *Q, long plane) {
    const int H = Q->H, W = Q->W, k = Q->k, s = Q->s, Ho = Q->Ho, Wo = Q->Wo;
    const float *x = Q->x + (size_t)plane * H * W;
    float *y = Q->y + (size_t)plane * Ho * Wo;
    const float area = (float)(k * k);
    for (int oy = 0; oy < Ho; oy++) {
        const float *row = x + (size_t)oy * s * W;
        if (k == 2 && s == 2) avg_row_ks(row, y + (size_t)oy * Wo, W, 2, 2, Wo, area);
        else avg_row_ks(row, y + (size_t)oy * Wo, W, k, s, Wo, area);
    }
}

/* Max pooling of a channels-last (N, H, W, C) input into the usual (N, C, Ho, Wo) output, one
 * output row per task: each window tap is a contiguous run of C values, folded in torch's
 * order into a row buffer (ox, c), which is then written out plane by plane. The stem conv
 * of a ResNet runs faster on channels-last input, and this saves converting its 112x112
 * output back to NCHW before pooling. */
static void maxpool_nhwc_row(const pool_t *Q, long t, float *restrict rowbuf) {
    const int H = Q->H, W = Q->W, C = Q->C, k = Q->k, s = Q->s, p = Q->p, Ho = Q->Ho, Wo = Q->Wo;
    const long n = t / Ho;
    const int oy = (int)(t % Ho);
    const float *x = Q->x + (size_t)n * H * W * C;
    for (int ox = 0; ox < Wo; ox++) {
        float *m = rowbuf + (size_t)ox * C;
        for (int c = 0; c < C; c++) m[c] = -INFINITY;
        for (int ky = 0; ky < k; ky++) {
            const int iy = oy * s - p + ky;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < k; kx++) {
                const int ix = ox * s - p + kx;
                if (ix >= 0 && ix < W) max_step(m, x + ((size_t)iy * W + ix) * C, C);
            }
        }
    }
    for (int c = 0; c < C; c++) {
        float *y = Q->y + (((size_t)n * C + c) * Ho + oy) * Wo;
        for (int ox = 0; ox < Wo; ox++) y[ox] = rowbuf[(size_t)ox * C + c];
    }
}

static void maxpool_job(void *arg) {
    pool_t *Q = (pool_t *)arg;
    float *hbuf = (float *)malloc(sizeof(float) * (Q->nhwc ? (size_t)Q->Wo * Q->C : (size_t)Q->H * Q->Wo));
    if (!hbuf) abort(); /* one plane's row maxima or one output row: tens of KiB */
    long t;
    while ((t = atomic_fetch_add(&Q->next, 1)) < Q->planes) {
        if (Q->nhwc) maxpool_nhwc_row(Q, t, hbuf);
        else if (Q->average) avgpool_plane(Q, t);
        else maxpool_plane(Q, t, hbuf);
        atomic_fetch_add(&Q->finished, 1);
    }
    free(hbuf);
    SPIN_UNTIL(atomic_load(&Q->finished) >= Q->planes);
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name, Py_ssize_t need,
                      Py_ssize_t itemsize) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (view->len < need * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, need %zd", name, view->len,
                     need * itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *py_conv(PyObject *self, PyObject *args) {
    PyObject *xo, *wo, *ao, *oo, *bao = Py_None, *bbo = Py_None, *ro = Py_None;
    int N, C, H, W, O, k, stride, pad, nthreads;
    if (!PyArg_ParseTuple(args, "OOOOiiiiiiiii|OOO", &xo, &wo, &ao, &oo, &N, &C, &H, &W, &O, &k, &stride, &pad,
                          &nthreads, &bao, &bbo, &ro))
        return NULL;
    if ((bao == Py_None) != (bbo == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "bitconv.conv: give both BatchNorm terms or neither");
        return NULL;
    }
    if (N < 0 || C < 1 || H < 0 || W < 0 || O < 1 || k < 1 || stride < 1 || pad < 0) {
        PyErr_SetString(PyExc_ValueError, "bitconv.conv: invalid shape arguments");
        return NULL;
    }
    conv_t P;
    memset(&P, 0, sizeof(P));
    P.N = N; P.C = C; P.H = H; P.W = W; P.O = O; P.k = k; P.stride = stride; P.pad = pad;
    P.Cw = (C + 63) / 64;
    P.nob = (O + OB - 1) / OB;
    P.Ho = (H + 2 * pad - k) / stride + 1;
    P.Wo = (W + 2 * pad - k) / stride + 1;
    if (H + 2 * pad < k || W + 2 * pad < k) {
        PyErr_SetString(PyExc_ValueError, "bitconv.conv: kernel larger than the padded input");
        return NULL;
    }
    /* every buffer taken is released at `done` */
    Py_buffer bufs[7];
    int nbuf = 0;
    PyObject *ret = NULL;
    int *off = NULL;
    const Py_ssize_t nout = (Py_ssize_t)N * O * P.Ho * P.Wo;
#define TAKE(obj, writable, name, need, size)                                        \
    do {                                                                          \
        if (get_buffer(obj, &bufs[nbuf], writable, name, need, size) < 0) goto done; \
        nbuf++;                                                                   \
    } while (0)
    TAKE(xo, 0, "x", (Py_ssize_t)N * C * H * W, 4);
    P.x = (const float *)bufs[nbuf - 1].buf;
    TAKE(wo, 0, "packed weights", (Py_ssize_t)P.nob * k * k * P.Cw * NIB * OB, 8);
    P.wpk = (const uint64_t *)bufs[nbuf - 1].buf;
    TAKE(ao, 0, "alpha", O, 4);
    P.alpha = (const float *)bufs[nbuf - 1].buf;
    TAKE(oo, 1, "out", nout, 4);
    P.out = (float *)bufs[nbuf - 1].buf;
    if (bao != Py_None) {
        TAKE(bao, 0, "bn_a", O, 4);
        P.bn_a = (const float *)bufs[nbuf - 1].buf;
        TAKE(bbo, 0, "bn_b", O, 4);
        P.bn_b = (const float *)bufs[nbuf - 1].buf;
    }
    if (ro != Py_None) {
        TAKE(ro, 0, "residual", nout, 4);
        P.res = (const float *)bufs[nbuf - 1].buf;
    }
#undef TAKE
    size_t act_words = (size_t)N * H * W * P.Cw * NIB;
    P.act = (uint64_t *)aligned_alloc(64, ((act_words * 8 + 63) / 64) * 64 + 64);
    off = (int *)malloc(sizeof(int) * (size_t)k * k * P.Cw);
    if (!P.act || !off) {
        PyErr_NoMemory();
        goto done;
    }
    /* Threads only pay off with enough work: ~ word pairs of XOR/popcount per thread. */
    double work = (double)N * P.Ho * P.Wo * (double)k * k * P.Cw * (P.nob * OB);
    int T = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    while (T > 1 && work / T < 20000.0) T--;
    P.nthreads = T;
    for (int ky = 0, i = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++)
            for (int cw = 0; cw < P.Cw; cw++) off[i++] = ((ky * W + kx) * P.Cw + cw) * NIB;
    P.off = off;
    Py_BEGIN_ALLOW_THREADS
    P.caller = pthread_self();
    P.pack_tasks = (long)N * (((long)H * W + PACK_CHUNK - 1) / PACK_CHUNK) * P.Cw;
    atomic_store(&P.next_pack, 0);
    atomic_store(&P.packed, 0);
    atomic_store(&P.next_task, 0);
    atomic_store(&P.computed, 0);
    pool_run(conv_job, &P, T);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    free(off);
    free(P.act);
    for (int i = 0; i < nbuf; i++) PyBuffer_Release(&bufs[i]);
    return ret;
}

static PyObject *pool2d(PyObject *args, int average, int nhwc) {
    PyObject *xo, *oo;
    int N, C, H, W, k, stride, pad, nthreads;
    if (!PyArg_ParseTuple(args, "OOiiiiiiii", &xo, &oo, &N, &C, &H, &W, &k, &stride, &pad, &nthreads))
        return NULL;
    if (N < 0 || C < 1 || H < 1 || W < 1 || k < 1 || stride < 1 || pad < 0 || 2 * pad > k ||
        H + 2 * pad < k || W + 2 * pad < k || (average && pad != 0)) {
        PyErr_SetString(PyExc_ValueError, average ? "bitconv.avgpool: invalid shape arguments (padding must be 0)"
                                                  : "bitconv.maxpool: invalid shape arguments");
        return NULL;
    }
    pool_t Q;
    memset(&Q, 0, sizeof(Q));
    Q.average = average;
    Q.nhwc = nhwc;
    Q.C = C;
    Q.H = H; Q.W = W; Q.k = k; Q.s = stride; Q.p = pad;
    Q.Ho = (H + 2 * pad - k) / stride + 1;
    Q.Wo = (W + 2 * pad - k) / stride + 1;
    Q.planes = nhwc ? N * Q.Ho : N * C; /* tasks: output rows (channels-last) or planes */
    Py_buffer xb, ob;
    if (get_buffer(xo, &xb, 0, "x", (Py_ssize_t)N * C * H * W, 4) < 0) return NULL;
    if (get_buffer(oo, &ob, 1, "out", (Py_ssize_t)N * C * Q.Ho * Q.Wo, 4) < 0) {
        PyBuffer_Release(&xb);
        return NULL;
    }
    Q.x = (const float *)xb.buf;
    Q.y = (float *)ob.buf;
    double work = (double)N * C * Q.Ho * Q.Wo * k * k;
    int T = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    while (T > 1 && work / T < 50000.0) T--;
    Py_BEGIN_ALLOW_THREADS
    pool_run(maxpool_job, &Q, T);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    Py_RETURN_NONE;
}

static PyObject *py_maxpool(PyObject *self, PyObject *args) { return pool2d(args, 0, 0); }
static PyObject *py_maxpool_nhwc(PyObject *self, PyObject *args) { return pool2d(args, 0, 1); }
static PyObject *py_avgpool(PyObject *self, PyObject *args) { return pool2d(args, 1, 0); }

static PyObject *py_info(PyObject *self, PyObject *noargs) {
#ifdef __AVX2__
    const char *kernel = "avx2-vpshufb-nibble";
#else
    const char *kernel = "scalar-popcount";
#endif
#ifdef _OPENMP
    const char *threads = "openmp";
#else
    const char *threads = "pthreads";
#endif
    return Py_BuildValue("{s:i,s:s,s:s,s:l}", "block", OB, "kernel", kernel, "threads", threads,
                         "worker_rows", (long)atomic_load(&worker_tasks));
}

static PyMethodDef methods[] = {
    {"conv", py_conv, METH_VARARGS,
     "conv(x, packed_w, alpha, out, N, C, H, W, O, k, stride, pad, threads[, bn_a, bn_b, residual]): "
     "1-bit conv of sign(x) with packed weights, zero padding, times alpha; then optionally "
     "fma(., bn_a[o], bn_b[o]) and + residual; writes float32 `out`."},
    {"maxpool", py_maxpool, METH_VARARGS,
     "maxpool(x, out, N, C, H, W, k, stride, pad, threads): exact max pooling (torch semantics)."},
    {"maxpool_nhwc", py_maxpool_nhwc, METH_VARARGS,
     "maxpool_nhwc(x, out, N, C, H, W, k, stride, pad, threads): maxpool() of a channels-last "
     "(N, H, W, C) input, written as (N, C, Ho, Wo)."},
    {"avgpool", py_avgpool, METH_VARARGS,
     "avgpool(x, out, N, C, H, W, k, stride, 0, threads): exact average pooling without padding "
     "(torch semantics)."},
    {"info", py_info, METH_NOARGS, "{'block': output channels per weight block, 'kernel': name}"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_bitconv",
                                    "Bit-packed XNOR/popcount convolution (see bitconv.c).", -1, methods};

PyMODINIT_FUNC PyInit__bitconv(void) {
#ifndef _OPENMP
    pthread_atfork(NULL, NULL, pool_after_fork);
#endif
    return PyModule_Create(&moddef);
}
