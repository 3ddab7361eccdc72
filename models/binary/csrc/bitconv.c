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
 * Kernels, chosen at run time (bitconv_kern.h is compiled once for each; one build runs on any
 * x86-64 CPU and uses what that CPU has, whatever CPU built it):
 *  - "avx512-vpopcntdq": AVX-512 F/BW/VL + VPOPCNTDQ. The 16 output channels are two 512-bit
 *    weight tiles of 8 x uint64; per activation word one broadcast, then XOR + VPOPCNTQ +
 *    64-bit add per tile (3 instructions per 512 weight bits).
 *  - "avx2-vpshufb-nibble": the 16 output channels sit in four 256-bit registers, one 64-bit
 *    lane each; the activation word is broadcast, XORed, and counted with the nibble-lookup
 *    (vpshufb) popcount into byte counters, which vpsadbw folds into per-lane 64-bit sums at
 *    most every 31 words (8 * 31 < 256, so bytes never overflow). Every packed word is stored
 *    as two (its low nibbles, then its high nibbles shifted down), which saves the
 *    AND/shift/AND of splitting each XOR: 6 vector ops per 256 bits instead of 8.
 *  - "portable": plain C with __builtin_popcountll (any CPU; the reference the others match).
 * On both SIMD paths, positions whose window lies inside the image take a fast path (offset
 * table, one contiguous weight run, vector epilogue); border positions loop over their valid
 * taps only. Choice: cpuid (__builtin_cpu_supports, which also checks that the OS saves the
 * wide registers) at module load picks the widest available; VISTREAM_KERNEL=avx512|avx2|
 * portable forces one (a CPU without it makes every call fail with the reason), and
 * set_kernel() switches at run time (tests run every path the machine has). The packed
 * layouts differ (nibble-split words on AVX2), so the weights are laid out for the active
 * kernel (info()["nibbles"]); a conv checks the weight buffer's exact size against it.
 * (Tried and dropped on AVX2, no faster here: a Harley-Seal carry-save tree for long
 * windows, and a position-major row buffer for the NCHW stores.)
 *
 * Also here: exact max- and average-pooling kernels, because torch's NCHW pooling is among the
 * slowest ops of a ResNet-18 at batch 1 (compiled per instruction set as well).
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

/* The SIMD kernels are compiled in `#pragma GCC target` regions: GCC only (clang ignores that
 * pragma and would refuse the intrinsics; a clang build gets the portable kernel alone).
 * -DBITCONV_X86=0 builds the portable kernel alone on any compiler. */
#ifndef BITCONV_X86
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BITCONV_X86 1
#else
#define BITCONV_X86 0
#endif
#endif
#if BITCONV_X86
#include <immintrin.h>
#endif

#define OB 16 /* output channels per weight block (four AVX2 / two AVX-512 registers of uint64) */
#define MAX_THREADS 64
#define NIB_MASK 0x0f0f0f0f0f0f0f0fULL
#define PACK_CHUNK 256 /* positions packed per task (the scratch row fits on the stack) */
#define TILE_W 64 /* output positions per tile (16 channels x 64 floats = 4 KiB on the stack) */

struct kernel_s;

typedef struct {
    const float *x;       /* (N, C, H, W) float32 */
    const uint64_t *wpk;  /* [nob][k*k][Cw][nib][OB] */
    const float *alpha;   /* (O,) */
    float *out;           /* (N, O, Ho, Wo) float32 */
    const float *bn_a, *bn_b; /* optional (O,): out = fma(conv, bn_a, bn_b), torch's eval BN */
    const float *res;     /* optional (N, O, Ho, Wo): added last, as `bn(conv(x)) + shortcut` */
    uint64_t *act;        /* [N][H][W][Cw][nib] packed signs */
    const struct kernel_s *kern; /* the kernel chosen when the call started */
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

/* Max and average pooling (bitconv_kern.h). Max pooling is exact whatever the implementation,
 * so the runtime runs the network's float MaxPool2d here too. torch visits a window row by row
 * with the rule `v > m || isnan(v)` from m = -inf, skipping padded positions. That fold returns
 * the last NaN of the window if there is one, else the first element equal to the maximum
 * (which decides the sign of a zero) — and the same holds when each window row is folded first
 * and the row results are then folded in row order. So the kernel is separable: a horizontal
 * pass (every input row -> its Wo row maxima, each computed once although two output rows
 * share it) and a vertical pass over those, both plain vectorisable loops. */
typedef struct {
    const float *x;
    float *y;
    int planes, H, W, k, s, p, Ho, Wo;
    int average; /* 0: max pooling, 1: average pooling (see avgpool_plane) */
    int nhwc, C;  /* max pooling of a channels-last input (see maxpool_nhwc_row) */
    const float *bn_a, *bn_b; /* optional (C,), channels-last only: pool fma(x, a, b), the
                               * eval BatchNorm before the pool, computed on the fly */
    const struct kernel_s *kern;
    _Atomic long next, finished;
} pool_t;

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* ------------------------------------------------------------------ the kernels, per ISA */
#define KSUF(f) f##_portable
#define KISA 0
#include "bitconv_kern.h"
#undef KSUF
#undef KISA

#if BITCONV_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,popcnt")
#define KSUF(f) f##_avx2
#define KISA 1
#include "bitconv_kern.h"
#undef KSUF
#undef KISA
#pragma GCC pop_options

#pragma GCC push_options
#ifdef BITCONV_EMULATE_AVX512 /* test build only: the AVX-512 kernel on scalar stand-ins */
#include "avx512_emu.h"
#else
#pragma GCC target("avx2,fma,popcnt,avx512f,avx512bw,avx512vl,avx512vpopcntdq")
#endif
#define KSUF(f) f##_avx512
#define KISA 2
#include "bitconv_kern.h"
#undef KSUF
#undef KISA
#pragma GCC pop_options
#endif

typedef struct kernel_s {
    const char *name;   /* what info() reports */
    const char *option; /* the VISTREAM_KERNEL / set_kernel() name */
    int nib;            /* words stored per packed word (2: nibble-split, AVX2) */
    void (*pack)(const conv_t *, long);
    void (*compute)(const conv_t *, long, long);
    void (*pool)(const pool_t *, long, float *);
} kernel_t;

static const kernel_t kernels[] = {
#if BITCONV_X86
#ifdef BITCONV_EMULATE_AVX512
    {"avx512-vpopcntdq-emulated", "avx512", 1, pack_task_avx512, compute_tasks_avx512, pool_task_avx512},
#else
    {"avx512-vpopcntdq", "avx512", 1, pack_task_avx512, compute_tasks_avx512, pool_task_avx512},
#endif
    {"avx2-vpshufb-nibble", "avx2", 2, pack_task_avx2, compute_tasks_avx2, pool_task_avx2},
#endif
    {"portable-popcount", "portable", 1, pack_task_portable, compute_tasks_portable, pool_task_portable},
};
#define NKERNELS ((int)(sizeof(kernels) / sizeof(kernels[0])))

/* Whether this CPU (and OS) runs kernel i; cpuid through libgcc, read at module load. */
static int kernel_ok[sizeof(kernels) / sizeof(kernels[0])];
static const kernel_t *_Atomic active_kernel;
static char kernel_error[256]; /* set when VISTREAM_KERNEL asks for what the CPU lacks */

static void detect_kernels(void) {
#if BITCONV_X86
    __builtin_cpu_init();
    kernel_ok[0] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
                   __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("popcnt");
    kernel_ok[1] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("popcnt");
#ifdef BITCONV_EMULATE_AVX512
    kernel_ok[0] = 1;
#endif
#endif
    kernel_ok[NKERNELS - 1] = 1;
}

/* The kernel named `option`, or NULL with a message in `err`. */
static const kernel_t *find_kernel(const char *option, char *err, size_t errlen) {
    for (int i = 0; i < NKERNELS; i++) {
        if (strcmp(kernels[i].option, option) != 0) continue;
        if (kernel_ok[i]) return &kernels[i];
        snprintf(err, errlen, "kernel %s (%s) is not supported by this CPU; it offers:%s%s portable",
                 option, kernels[i].name,
#if BITCONV_X86
                 kernel_ok[0] ? " avx512" : "", kernel_ok[1] ? " avx2" : ""
#else
                 "", ""
#endif
        );
        return NULL;
    }
    snprintf(err, errlen, "unknown kernel %.40s (choose avx512, avx2 or portable)", option);
    return NULL;
}

static void choose_kernel(void) {
    detect_kernels();
    int best = 0;
    while (!kernel_ok[best]) best++;
    const char *env = getenv("VISTREAM_KERNEL");
    if (env && *env && strcmp(env, "auto") != 0) {
        char err[200];
        const kernel_t *k = find_kernel(env, err, sizeof(err));
        atomic_store(&active_kernel, k);
        if (!k) snprintf(kernel_error, sizeof(kernel_error), "VISTREAM_KERNEL=%.20s: %s", env, err);
        return;
    }
    atomic_store(&active_kernel, &kernels[best]);
}

/* The kernel for a call, or NULL with a Python exception set. */
static const kernel_t *current_kernel(void) {
    const kernel_t *k = atomic_load(&active_kernel);
    if (!k) PyErr_SetString(PyExc_RuntimeError, kernel_error);
    return k;
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
        P->kern->pack(P, t);
        atomic_fetch_add(&P->packed, 1);
    }
    SPIN_UNTIL(atomic_load(&P->packed) >= ptasks);
    while ((t = claim(&P->next_task, tasks, P->nthreads, &end)) >= 0) {
        P->kern->compute(P, t, end);
        mine += end - t;
        atomic_fetch_add(&P->computed, end - t);
    }
    if (is_worker && mine) atomic_fetch_add(&worker_tasks, mine);
    SPIN_UNTIL(atomic_load(&P->computed) >= tasks);
}


/* One participant of a pooling job: claim tasks (planes or channels-last output rows). */
static void pool_job(void *arg) {
    pool_t *Q = (pool_t *)arg;
    float *buf = (float *)malloc(sizeof(float) * (Q->nhwc ? (size_t)Q->Wo * Q->C : (size_t)Q->H * Q->Wo));
    if (!buf) abort(); /* one plane's row maxima or one output row: tens of KiB */
    long t;
    while ((t = atomic_fetch_add(&Q->next, 1)) < Q->planes) {
        Q->kern->pool(Q, t, buf);
        atomic_fetch_add(&Q->finished, 1);
    }
    free(buf);
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
    const kernel_t *kern = current_kernel();
    if (!kern) return NULL;
    conv_t P;
    memset(&P, 0, sizeof(P));
    P.kern = kern;
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
    TAKE(wo, 0, "packed weights", (Py_ssize_t)P.nob * k * k * P.Cw * kern->nib * OB, 8);
    P.wpk = (const uint64_t *)bufs[nbuf - 1].buf;
    if (bufs[nbuf - 1].len != (Py_ssize_t)P.nob * k * k * P.Cw * kern->nib * OB * 8) {
        PyErr_Format(PyExc_ValueError, "packed weights: %zd bytes, the %s kernel's layout needs %zd "
                     "(weights laid out for another kernel?)", bufs[nbuf - 1].len, kern->name,
                     (Py_ssize_t)P.nob * k * k * P.Cw * kern->nib * OB * 8);
        goto done;
    }
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
    size_t act_words = (size_t)N * H * W * P.Cw * kern->nib;
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
            for (int cw = 0; cw < P.Cw; cw++) off[i++] = ((ky * W + kx) * P.Cw + cw) * kern->nib;
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
    PyObject *xo, *oo, *bao = Py_None, *bbo = Py_None;
    int N, C, H, W, k, stride, pad, nthreads;
    if (!PyArg_ParseTuple(args, "OOiiiiiiii|OO", &xo, &oo, &N, &C, &H, &W, &k, &stride, &pad, &nthreads,
                          &bao, &bbo))
        return NULL;
    if ((bao == Py_None) != (bbo == Py_None) || (bao != Py_None && !nhwc)) {
        PyErr_SetString(PyExc_ValueError, "bitconv.maxpool_nhwc: give both BatchNorm terms or neither "
                                          "(channels-last max pooling only)");
        return NULL;
    }
    if (N < 0 || C < 1 || H < 1 || W < 1 || k < 1 || stride < 1 || pad < 0 || 2 * pad > k ||
        H + 2 * pad < k || W + 2 * pad < k || (average && pad != 0)) {
        PyErr_SetString(PyExc_ValueError, average ? "bitconv.avgpool: invalid shape arguments (padding must be 0)"
                                                  : "bitconv.maxpool: invalid shape arguments");
        return NULL;
    }
    const kernel_t *kern = current_kernel();
    if (!kern) return NULL;
    pool_t Q;
    memset(&Q, 0, sizeof(Q));
    Q.kern = kern;
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
    Py_buffer bab, bbb;
    if (bao != Py_None) {
        if (get_buffer(bao, &bab, 0, "bn_a", C, 4) < 0) {
            PyBuffer_Release(&xb);
            PyBuffer_Release(&ob);
            return NULL;
        }
        if (get_buffer(bbo, &bbb, 0, "bn_b", C, 4) < 0) {
            PyBuffer_Release(&bab);
            PyBuffer_Release(&xb);
            PyBuffer_Release(&ob);
            return NULL;
        }
        Q.bn_a = (const float *)bab.buf;
        Q.bn_b = (const float *)bbb.buf;
    }
    double work = (double)N * C * Q.Ho * Q.Wo * k * k;
    int T = nthreads < 1 ? 1 : (nthreads > MAX_THREADS ? MAX_THREADS : nthreads);
    while (T > 1 && work / T < 50000.0) T--;
    Py_BEGIN_ALLOW_THREADS
    pool_run(pool_job, &Q, T);
    Py_END_ALLOW_THREADS
    if (Q.bn_a) {
        PyBuffer_Release(&bab);
        PyBuffer_Release(&bbb);
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    Py_RETURN_NONE;
}

static PyObject *py_maxpool(PyObject *self, PyObject *args) { return pool2d(args, 0, 0); }
static PyObject *py_maxpool_nhwc(PyObject *self, PyObject *args) { return pool2d(args, 0, 1); }
static PyObject *py_avgpool(PyObject *self, PyObject *args) { return pool2d(args, 1, 0); }

/* The CPU features the kernels care about, as the OS exposes them (cpuid + XSAVE state). */
static PyObject *cpu_features(void) {
    PyObject *lst = PyList_New(0);
    if (!lst) return NULL;
#if BITCONV_X86
    static const char *names[] = {"sse4.2", "popcnt", "avx", "avx2", "fma", "bmi2", "avx512f",
                                  "avx512bw", "avx512vl", "avx512dq", "avx512vnni",
                                  "avx512vpopcntdq", "avx512bitalg"};
    const int have[] = {__builtin_cpu_supports("sse4.2"), __builtin_cpu_supports("popcnt"),
                        __builtin_cpu_supports("avx"), __builtin_cpu_supports("avx2"),
                        __builtin_cpu_supports("fma"), __builtin_cpu_supports("bmi2"),
                        __builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bw"),
                        __builtin_cpu_supports("avx512vl"), __builtin_cpu_supports("avx512dq"),
                        __builtin_cpu_supports("avx512vnni"),
                        __builtin_cpu_supports("avx512vpopcntdq"),
                        __builtin_cpu_supports("avx512bitalg")};
    for (size_t i = 0; i < sizeof(have) / sizeof(have[0]); i++) {
        if (!have[i]) continue;
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s || PyList_Append(lst, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(lst);
            return NULL;
        }
        Py_DECREF(s);
    }
#endif
    return lst;
}

static PyObject *py_info(PyObject *self, PyObject *noargs) {
    const kernel_t *k = atomic_load(&active_kernel);
#ifdef _OPENMP
    const char *threads = "openmp";
#else
    const char *threads = "pthreads";
#endif
    PyObject *avail = PyList_New(0), *compiled = PyList_New(0), *feats = cpu_features();
    if (!avail || !compiled || !feats) goto fail;
    for (int i = 0; i < NKERNELS; i++) {
        PyObject *s = PyUnicode_FromString(kernels[i].option);
        if (!s || PyList_Append(compiled, s) < 0 || (kernel_ok[i] && PyList_Append(avail, s) < 0)) {
            Py_XDECREF(s);
            goto fail;
        }
        Py_DECREF(s);
    }
    return Py_BuildValue("{s:i,s:z,s:z,s:i,s:s,s:l,s:N,s:N,s:N,s:z}", "block", OB, "kernel",
                         k ? k->name : NULL, "option", k ? k->option : NULL, "nibbles",
                         k ? k->nib : 0, "threads", threads, "worker_rows",
                         (long)atomic_load(&worker_tasks), "available", avail, "compiled", compiled,
                         "cpu_features", feats, "error", k ? NULL : kernel_error);
fail:
    Py_XDECREF(avail);
    Py_XDECREF(compiled);
    Py_XDECREF(feats);
    return NULL;
}

static PyObject *py_set_kernel(PyObject *self, PyObject *args) {
    const char *option;
    if (!PyArg_ParseTuple(args, "s", &option)) return NULL;
    char err[256];
    const kernel_t *k = find_kernel(option, err, sizeof(err));
    if (!k) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    const kernel_t *old = atomic_exchange(&active_kernel, k);
    return old ? PyUnicode_FromString(old->option) : Py_NewRef(Py_None);
}

static PyMethodDef methods[] = {
    {"conv", py_conv, METH_VARARGS,
     "conv(x, packed_w, alpha, out, N, C, H, W, O, k, stride, pad, threads[, bn_a, bn_b, residual]): "
     "1-bit conv of sign(x) with packed weights, zero padding, times alpha; then optionally "
     "fma(., bn_a[o], bn_b[o]) and + residual; writes float32 `out`."},
    {"maxpool", py_maxpool, METH_VARARGS,
     "maxpool(x, out, N, C, H, W, k, stride, pad, threads): exact max pooling (torch semantics)."},
    {"maxpool_nhwc", py_maxpool_nhwc, METH_VARARGS,
     "maxpool_nhwc(x, out, N, C, H, W, k, stride, pad, threads[, bn_a, bn_b]): maxpool() of a "
     "channels-last (N, H, W, C) input, written as (N, C, Ho, Wo); with bn_a, bn_b (C,) it pools "
     "fma(x, bn_a[c], bn_b[c]) (the eval BatchNorm before the pool) without writing it out."},
    {"avgpool", py_avgpool, METH_VARARGS,
     "avgpool(x, out, N, C, H, W, k, stride, 0, threads): exact average pooling without padding "
     "(torch semantics)."},
    {"info", py_info, METH_NOARGS,
     "{'block': output channels per weight block, 'kernel': the active kernel's name, 'option': its "
     "VISTREAM_KERNEL name, 'nibbles': words per packed word in its layout, 'available': kernels "
     "this CPU runs, 'compiled': kernels in this build, 'cpu_features': what the CPU offers, "
     "'error': why no kernel is active (a VISTREAM_KERNEL the CPU lacks), ...}"},
    {"set_kernel", py_set_kernel, METH_VARARGS,
     "set_kernel(name): make 'avx512', 'avx2' or 'portable' the active kernel (ValueError if this "
     "CPU lacks it); returns the previous one's name. Weights must then be laid out anew."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_bitconv",
                                    "Bit-packed XNOR/popcount convolution (see bitconv.c).", -1, methods};

PyMODINIT_FUNC PyInit__bitconv(void) {
    choose_kernel();
#ifndef _OPENMP
    pthread_atfork(NULL, NULL, pool_after_fork);
#endif
    return PyModule_Create(&moddef);
}
