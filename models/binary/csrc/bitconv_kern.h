/* The compute kernels of bitconv.c, compiled once per instruction set.
 *
 * bitconv.c includes this file three times: KISA 0 (portable: plain C, the x86-64 baseline or
 * any other CPU), KISA 1 (AVX2 + POPCNT + FMA) and KISA 2 (AVX-512 F/BW/VL/VPOPCNTDQ), the
 * last two inside `#pragma GCC target` regions, so one build holds all three whatever CPU
 * compiled it, and bitconv.c picks one at module load (cpuid). KSUF(name) gives each copy its
 * own names. No header guard: the repetition is the point.
 *
 * Layouts (KNIB words per packed 64-bit word):
 *   activations [N][H][W][Cw][KNIB], weights [O/16][k*k][Cw][KNIB][16];
 *   KNIB = 2 on the AVX2 path (low nibbles, then high nibbles shifted down: the vpshufb table
 *   popcount wants them split), KNIB = 1 on the other two (plain words: the portable path uses
 *   the scalar popcount, the AVX-512 path VPOPCNTQ). bit c%64 of word c/64 is set when
 *   channel c is negative; bits past C are 0 in both operands, so they never count.
 * Every path computes the same integers (popcounts), so every path gives the same floats. */

#if KISA == 1
#define KNIB 2
#else
#define KNIB 1
#endif

/* Pack task t of the flattened (n, chunk of PACK_CHUNK positions, word cw) index. For each
 * channel the inner loop runs over contiguous positions of one plane, which gcc vectorises
 * (with this copy's instruction set). */
static void KSUF(pack_task)(const conv_t *P, long t) {
    const int C = P->C, Cw = P->Cw;
    const long HW = (long)P->H * P->W, nchunk = (HW + PACK_CHUNK - 1) / PACK_CHUNK;
    uint64_t tmp[PACK_CHUNK];
    const int cw = (int)(t % Cw);
    const long n = t / Cw / nchunk, p0 = (t / Cw % nchunk) * PACK_CHUNK;
    const int np = (int)(HW - p0 < PACK_CHUNK ? HW - p0 : PACK_CHUNK);
    uint64_t *dst = P->act + ((size_t)n * HW + p0) * Cw * KNIB;
    const int cend = imin(64, C - cw * 64);
    memset(tmp, 0, sizeof(uint64_t) * (size_t)np);
    for (int j = 0; j < cend; j++) {
        const float *xr = P->x + ((size_t)n * C + (size_t)cw * 64 + j) * HW + p0;
        /* !(v >= 0) is 1 for negatives and NaN, 0 for +-0: hard_sign's convention. */
        for (int i = 0; i < np; i++) tmp[i] |= (uint64_t)(!(xr[i] >= 0.0f)) << j;
    }
#if KNIB == 2
    /* stored as nibble planes: the low and the high nibble of every byte */
    for (int i = 0; i < np; i++) {
        dst[((size_t)i * Cw + cw) * 2] = tmp[i] & NIB_MASK;
        dst[((size_t)i * Cw + cw) * 2 + 1] = (tmp[i] >> 4) & NIB_MASK;
    }
#else
    for (int i = 0; i < np; i++) dst[(size_t)i * Cw + cw] = tmp[i];
#endif
}

#if KISA == 1
/* per-byte popcount of (a ^ w) from the nibble planes of both operands */
static inline __m256i KSUF(xor_count)(__m256i alo, __m256i ahi, const __m256i *w, __m256i lut) {
    const __m256i lo = _mm256_xor_si256(alo, _mm256_loadu_si256(w));
    const __m256i hi = _mm256_xor_si256(ahi, _mm256_loadu_si256(w + OB / 4));
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
#define KLUT _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, \
                              0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4)
#endif

/* popcount(a ^ w) summed over the valid taps of one output position, for OB channels. */
static inline void KSUF(dot_block)(const conv_t *P, const uint64_t *A, const uint64_t *Wb, int iy0,
                                   int ix0, int ky0, int ky1, int kx0, int kx1, uint64_t acc[OB]) {
    const int Cw = P->Cw, k = P->k, W = P->W;
    const int nw = (kx1 - kx0) * Cw;
#if KISA == 1
    const __m256i lut = KLUT;
    const __m256i zero = _mm256_setzero_si256();
    __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero;
    __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    int cnt = 0;
    for (int ky = ky0; ky < ky1; ky++) {
        const uint64_t *a = A + ((size_t)(iy0 + ky) * W + (ix0 + kx0)) * Cw * KNIB;
        const uint64_t *w = Wb + ((size_t)(ky * k + kx0) * Cw) * KNIB * OB;
        for (int i = 0; i < nw; i++) {
            const __m256i alo = _mm256_set1_epi64x((long long)a[(size_t)i * KNIB]);
            const __m256i ahi = _mm256_set1_epi64x((long long)a[(size_t)i * KNIB + 1]);
            const __m256i *wv = (const __m256i *)(w + (size_t)i * KNIB * OB);
            b0 = _mm256_add_epi8(b0, KSUF(xor_count)(alo, ahi, wv + 0, lut));
            b1 = _mm256_add_epi8(b1, KSUF(xor_count)(alo, ahi, wv + 1, lut));
            b2 = _mm256_add_epi8(b2, KSUF(xor_count)(alo, ahi, wv + 2, lut));
            b3 = _mm256_add_epi8(b3, KSUF(xor_count)(alo, ahi, wv + 3, lut));
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
#elif KISA == 2
    /* 16 output channels = two 512-bit registers of 8 x uint64; VPOPCNTQ counts each lane
     * directly into 64-bit lanes, so there are no byte counters to fold */
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    for (int ky = ky0; ky < ky1; ky++) {
        const uint64_t *a = A + ((size_t)(iy0 + ky) * W + (ix0 + kx0)) * Cw;
        const uint64_t *w = Wb + ((size_t)(ky * k + kx0) * Cw) * OB;
        for (int i = 0; i < nw; i++) {
            const __m512i av = _mm512_set1_epi64((long long)a[i]);
            const uint64_t *wi = w + (size_t)i * OB;
            s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_xor_si512(av, _mm512_loadu_si512(wi))));
            s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_xor_si512(av, _mm512_loadu_si512(wi + 8))));
        }
    }
    _mm512_storeu_si512(acc + 0, s0);
    _mm512_storeu_si512(acc + 8, s1);
#else
    for (int j = 0; j < OB; j++) acc[j] = 0;
    for (int ky = ky0; ky < ky1; ky++) {
        const uint64_t *a = A + ((size_t)(iy0 + ky) * W + (ix0 + kx0)) * Cw;
        const uint64_t *w = Wb + ((size_t)(ky * k + kx0) * Cw) * OB;
        for (int i = 0; i < nw; i++) {
            const uint64_t av = a[i];
            const uint64_t *wi = w + (size_t)i * OB;
            for (int j = 0; j < OB; j++) acc[j] += (uint64_t)__builtin_popcountll(av ^ wi[j]);
        }
    }
#endif
}

#if KISA == 1
/* Interior positions (the whole window inside the image): the K = k*k*Cw words of the window
 * are read through a precomputed offset table, the weights are then one contiguous run, and
 * the byte counters are folded every 31 words by chunking (no test inside the loop). The
 * epilogue converts the 16 counts and multiplies by alpha in vector registers; the float
 * multiply is the same IEEE single multiply as the scalar path. */
static inline void KSUF(dot_full_store)(const uint64_t *a0, const uint64_t *Wb, const int *off, int K,
                                        int valid, const float *alpha16, float res[OB]) {
    const __m256i lut = KLUT;
    const __m256i zero = _mm256_setzero_si256();
    __m256i s0 = zero, s1 = zero, s2 = zero, s3 = zero;
    for (int i0 = 0; i0 < K; i0 += 31) {
        const int i1 = K - i0 < 31 ? K : i0 + 31;
        __m256i b0 = zero, b1 = zero, b2 = zero, b3 = zero;
        for (int i = i0; i < i1; i++) {
            const __m256i alo = _mm256_set1_epi64x((long long)a0[off[i]]);
            const __m256i ahi = _mm256_set1_epi64x((long long)a0[off[i] + 1]);
            const __m256i *wv = (const __m256i *)(Wb + (size_t)i * KNIB * OB);
            b0 = _mm256_add_epi8(b0, KSUF(xor_count)(alo, ahi, wv + 0, lut));
            b1 = _mm256_add_epi8(b1, KSUF(xor_count)(alo, ahi, wv + 1, lut));
            b2 = _mm256_add_epi8(b2, KSUF(xor_count)(alo, ahi, wv + 2, lut));
            b3 = _mm256_add_epi8(b3, KSUF(xor_count)(alo, ahi, wv + 3, lut));
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
#elif KISA == 2
/* The AVX-512 twin of the AVX2 interior path: the same offset table and contiguous weight
 * run; per window word one broadcast, then for each 512-bit weight tile (8 output channels)
 * XOR + VPOPCNTQ + 64-bit add. Two words per iteration into separate accumulators, so the
 * adds of consecutive words do not wait on each other. Epilogue: the 16 counts (< 2^31)
 * narrowed to int32 (VPMOVQD), valid - 2 * count, converted to float (round to nearest, exact
 * below 2^24 like the scalar cast) and one IEEE multiply by alpha. */
static inline void KSUF(dot_full_store)(const uint64_t *a0, const uint64_t *Wb, const int *off, int K,
                                        int valid, const float *alpha16, float res[OB]) {
    __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
    __m512i t0 = _mm512_setzero_si512(), t1 = _mm512_setzero_si512();
    int i = 0;
    for (; i + 1 < K; i += 2) {
        const __m512i a = _mm512_set1_epi64((long long)a0[off[i]]);
        const __m512i b = _mm512_set1_epi64((long long)a0[off[i + 1]]);
        const uint64_t *w = Wb + (size_t)i * OB;
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_xor_si512(a, _mm512_loadu_si512(w))));
        s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_xor_si512(a, _mm512_loadu_si512(w + 8))));
        t0 = _mm512_add_epi64(t0, _mm512_popcnt_epi64(_mm512_xor_si512(b, _mm512_loadu_si512(w + OB))));
        t1 = _mm512_add_epi64(t1, _mm512_popcnt_epi64(_mm512_xor_si512(b, _mm512_loadu_si512(w + OB + 8))));
    }
    if (i < K) {
        const __m512i a = _mm512_set1_epi64((long long)a0[off[i]]);
        const uint64_t *w = Wb + (size_t)i * OB;
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_xor_si512(a, _mm512_loadu_si512(w))));
        s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_xor_si512(a, _mm512_loadu_si512(w + 8))));
    }
    s0 = _mm512_add_epi64(s0, t0);
    s1 = _mm512_add_epi64(s1, t1);
    const __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(s0)),
                                         _mm512_cvtepi64_epi32(s1), 1);
    const __m512i d = _mm512_sub_epi32(_mm512_set1_epi32(valid), _mm512_slli_epi32(c, 1));
    _mm512_storeu_ps(res, _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_loadu_ps(alpha16)));
}
#endif

/* Write a tile of one output row, [16 channels][up to TILE_W positions], to the NCHW output:
 * contiguous runs per channel (instead of 16 stores to 16 planes per position), and the
 * optional unit tail applied there, vectorised along the row. fmaf is one correctly rounded
 * fused multiply-add on every path (an instruction where FMA is enabled, libm otherwise). */
static void KSUF(flush_tile)(const conv_t *P, const float *tile, size_t base, size_t plane, int o0,
                             int on, int ox0, int n) {
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
static void KSUF(compute_tasks)(const conv_t *P, long t0, long t1) {
    const int H = P->H, W = P->W, k = P->k, s = P->stride, pad = P->pad, Cw = P->Cw;
    const int Ho = P->Ho, Wo = P->Wo, O = P->O, C = P->C;
    const size_t plane = (size_t)Ho * Wo;
    uint64_t acc[OB] __attribute__((aligned(64)));
    float alpha16[OB];
    float tile[OB * TILE_W];
#if KISA > 0
    float res[OB];
    const int K = k * k * Cw, full = C * k * k;
#endif
    for (long t = t0; t < t1; t++) {
        const int oy = (int)(t % Ho);
        const long rest = t / Ho;
        const int ob = (int)(rest % P->nob);
        const long n = rest / P->nob;
        const int o0 = ob * OB, on = imin(OB, O - o0);
        const uint64_t *A = P->act + (size_t)n * H * W * Cw * KNIB;
        const uint64_t *Wb = P->wpk + (size_t)ob * k * k * Cw * KNIB * OB;
        const size_t base = ((size_t)n * O + o0) * plane + (size_t)oy * Wo;
        const int iy0 = oy * s - pad;
        const int ky0 = imax(0, -iy0), ky1 = imin(k, H - iy0);
        for (int j = 0; j < OB; j++) alpha16[j] = j < on ? P->alpha[o0 + j] : 0.0f;
        for (int ox = 0; ox < Wo; ox++) {
            const int ix0 = ox * s - pad, col = ox % TILE_W;
            if (col == 0 && ox > 0) KSUF(flush_tile)(P, tile, base, plane, o0, on, ox - TILE_W, TILE_W);
#if KISA > 0
            if (ky0 == 0 && ky1 == k && ix0 >= 0 && ix0 + k <= W) {
                KSUF(dot_full_store)(A + ((size_t)iy0 * W + ix0) * Cw * KNIB, Wb, P->off, K, full,
                                     alpha16, res);
                for (int j = 0; j < OB; j++) tile[j * TILE_W + col] = res[j];
                continue;
            }
#endif
            const int kx0 = imax(0, -ix0), kx1 = imin(k, W - ix0);
            const int valid = (ky1 > ky0 && kx1 > kx0) ? C * (ky1 - ky0) * (kx1 - kx0) : 0;
            if (valid) {
                KSUF(dot_block)(P, A, Wb, iy0, ix0, ky0, ky1, kx0, kx1, acc);
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
        KSUF(flush_tile)(P, tile, base, plane, o0, on, last, Wo - last);
    }
}

/* ------------------------------------------------------------------ pooling (see bitconv.c) */

/* m[i] = torch's running max after seeing v[i] (the `|` keeps it branch-free, vectorisable) */
static inline void KSUF(max_step)(float *restrict m, const float *restrict v, int n) {
    for (int i = 0; i < n; i++) {
        const float a = v[i], c = m[i];
        m[i] = ((a > c) | (a != a)) ? a : c;
    }
}

/* max_step of fma(v, a, b): the eval BatchNorm before the pool, one correctly rounded fma per
 * value as torch computes it (the caller checks that once per shape), never written out */
static inline void KSUF(max_step_bn)(float *restrict m, const float *restrict v, const float *restrict a,
                                     const float *restrict b, int n) {
    for (int i = 0; i < n; i++) {
        const float t = fmaf(v[i], a[i], b[i]), c = m[i];
        m[i] = ((t > c) | (t != t)) ? t : c;
    }
}

/* h[ox] = fold over kx of row[ox * s - p + kx], the valid taps only. Outputs whose window is
 * inside the row keep the running max in a register (with k and s compile-time constants
 * where row_max_ks is inlined, gcc vectorises that loop); the few others check every tap. */
static inline void KSUF(row_max_ks)(const float *restrict row, float *restrict h, int W, int k, int s,
                                    int p, int Wo) {
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

static void KSUF(row_max)(const float *restrict row, float *restrict h, int W, int k, int s, int p,
                          int Wo) {
    if (k == 3 && s == 2) KSUF(row_max_ks)(row, h, W, 3, 2, p, Wo); /* ResNet stems */
    else if (k == 3 && s == 1) KSUF(row_max_ks)(row, h, W, 3, 1, p, Wo);
    else if (k == 2 && s == 2) KSUF(row_max_ks)(row, h, W, 2, 2, p, Wo);
    else KSUF(row_max_ks)(row, h, W, k, s, p, Wo);
}

static void KSUF(maxpool_plane)(const pool_t *Q, long plane, float *restrict hbuf) {
    const int H = Q->H, W = Q->W, k = Q->k, s = Q->s, p = Q->p, Ho = Q->Ho, Wo = Q->Wo;
    const float *x = Q->x + (size_t)plane * H * W;
    float *y = Q->y + (size_t)plane * Ho * Wo;
    for (int iy = 0; iy < H; iy++) KSUF(row_max)(x + (size_t)iy * W, hbuf + (size_t)iy * Wo, W, k, s, p, Wo);
    for (int oy = 0; oy < Ho; oy++) {
        float *m = y + (size_t)oy * Wo;
        for (int ox = 0; ox < Wo; ox++) m[ox] = -INFINITY;
        for (int ky = 0; ky < k; ky++) {
            const int iy = oy * s - p + ky;
            if (iy >= 0 && iy < H) KSUF(max_step)(m, hbuf + (size_t)iy * Wo, Wo);
        }
    }
}

/* Average pooling without padding (the down-sampling shortcuts' AvgPool2d(2)), exactly as
 * torch's NCHW CPU kernel computes it: a float sum from 0 over the window, row by row, then
 * one division by the window size. */
static inline void KSUF(avg_row_ks)(const float *restrict x, float *restrict y, int W, int k, int s,
                                    int Wo, float area) {
    for (int ox = 0; ox < Wo; ox++) {
        float sum = 0.0f;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) sum += x[(size_t)ky * W + (size_t)ox * s + kx];
        y[ox] = sum / area;
    }
}

static void KSUF(avgpool_plane)(const pool_t *Q, long plane) {
    const int H = Q->H, W = Q->W, k = Q->k, s = Q->s, Ho = Q->Ho, Wo = Q->Wo;
    const float *x = Q->x + (size_t)plane * H * W;
    float *y = Q->y + (size_t)plane * Ho * Wo;
    const float area = (float)(k * k);
    for (int oy = 0; oy < Ho; oy++) {
        const float *row = x + (size_t)oy * s * W;
        if (k == 2 && s == 2) KSUF(avg_row_ks)(row, y + (size_t)oy * Wo, W, 2, 2, Wo, area);
        else KSUF(avg_row_ks)(row, y + (size_t)oy * Wo, W, k, s, Wo, area);
    }
}

/* Max pooling of a channels-last (N, H, W, C) input into the usual (N, C, Ho, Wo) output, one
 * output row per task: each window tap is a contiguous run of C values, folded in torch's
 * order into a row buffer (ox, c), which is then written out plane by plane. */
static void KSUF(maxpool_nhwc_row)(const pool_t *Q, long t, float *restrict rowbuf) {
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
                if (ix < 0 || ix >= W) continue;
                if (Q->bn_a) KSUF(max_step_bn)(m, x + ((size_t)iy * W + ix) * C, Q->bn_a, Q->bn_b, C);
                else KSUF(max_step)(m, x + ((size_t)iy * W + ix) * C, C);
            }
        }
    }
    for (int c = 0; c < C; c++) {
        float *y = Q->y + (((size_t)n * C + c) * Ho + oy) * Wo;
        for (int ox = 0; ox < Wo; ox++) y[ox] = rowbuf[(size_t)ox * C + c];
    }
}

/* One pooling task: an output row (channels-last input) or a whole plane. */
static void KSUF(pool_task)(const pool_t *Q, long t, float *restrict buf) {
    if (Q->nhwc) KSUF(maxpool_nhwc_row)(Q, t, buf);
    else if (Q->average) KSUF(avgpool_plane)(Q, t);
    else KSUF(maxpool_plane)(Q, t, buf);
}

#undef KNIB
#ifdef KLUT
#undef KLUT
#endif
