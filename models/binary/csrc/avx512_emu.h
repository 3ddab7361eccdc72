/* Scalar stand-ins for the AVX-512 intrinsics the KISA 2 kernel of bitconv_kern.h uses, for a
 * test build on a CPU without AVX-512 (bitconv.c with -DBITCONV_EMULATE_AVX512; see
 * tests/models/binary/test_packed_avx512_emulated.py). Each one does, lane by lane, what
 * Intel's documentation says the instruction does; the kernel's own code (layout, loops,
 * pairing of words, epilogue) is then compiled and run unchanged. The names are macros onto
 * emu_* functions, so this header can follow <immintrin.h>. Never part of a normal build. */
#include <stdint.h>
#include <string.h>

typedef struct { uint64_t q[8]; } emu_m512i;  /* 8 x 64-bit lanes (also 16 x 32-bit) */
typedef struct { float f[16]; } emu_m512;
typedef struct { uint32_t d[8]; } emu_m256i;

static inline emu_m512i emu_setzero_si512(void) { emu_m512i r; memset(&r, 0, sizeof r); return r; }
static inline emu_m512i emu_set1_epi64(long long v) {
    emu_m512i r; for (int i = 0; i < 8; i++) r.q[i] = (uint64_t)v; return r;
}
static inline emu_m512i emu_add_epi64(emu_m512i a, emu_m512i b) {
    for (int i = 0; i < 8; i++) a.q[i] += b.q[i];
    return a;
}
static inline emu_m512i emu_xor_si512(emu_m512i a, emu_m512i b) {
    for (int i = 0; i < 8; i++) a.q[i] ^= b.q[i];
    return a;
}
static inline emu_m512i emu_popcnt_epi64(emu_m512i a) {
    for (int i = 0; i < 8; i++) a.q[i] = (uint64_t)__builtin_popcountll(a.q[i]);
    return a;
}
static inline emu_m512i emu_loadu_si512(const void *p) { emu_m512i r; memcpy(&r, p, sizeof r); return r; }
static inline void emu_storeu_si512(void *p, emu_m512i a) { memcpy(p, &a, sizeof a); }
/* VPMOVQD: each 64-bit lane truncated to 32 bits */
static inline emu_m256i emu_cvtepi64_epi32(emu_m512i a) {
    emu_m256i r; for (int i = 0; i < 8; i++) r.d[i] = (uint32_t)a.q[i]; return r;
}
static inline emu_m512i emu_castsi256_si512(emu_m256i a) {
    emu_m512i r; memset(&r, 0, sizeof r); memcpy(&r, &a, sizeof a); return r; /* upper: undefined */
}
/* VINSERTI64X4: 256 bits into half `imm` (0 low, 1 high) */
static inline emu_m512i emu_inserti64x4(emu_m512i a, emu_m256i b, int imm) {
    memcpy((char *)&a + (imm & 1) * 32, &b, 32); return a;
}
static inline uint32_t emu_d(emu_m512i a, int i) { uint32_t v; memcpy(&v, (char *)&a + 4 * i, 4); return v; }
static inline emu_m512i emu_from_d(const uint32_t d[16]) { emu_m512i r; memcpy(&r, d, 64); return r; }
static inline emu_m512i emu_set1_epi32(int v) {
    uint32_t d[16]; for (int i = 0; i < 16; i++) d[i] = (uint32_t)v; return emu_from_d(d);
}
static inline emu_m512i emu_sub_epi32(emu_m512i a, emu_m512i b) {
    uint32_t d[16]; for (int i = 0; i < 16; i++) d[i] = emu_d(a, i) - emu_d(b, i); return emu_from_d(d);
}
static inline emu_m512i emu_slli_epi32(emu_m512i a, unsigned n) {
    uint32_t d[16]; for (int i = 0; i < 16; i++) d[i] = n > 31 ? 0 : emu_d(a, i) << n; return emu_from_d(d);
}
static inline emu_m512 emu_cvtepi32_ps(emu_m512i a) { /* round to nearest, as (float)int */
    emu_m512 r; for (int i = 0; i < 16; i++) r.f[i] = (float)(int32_t)emu_d(a, i); return r;
}
static inline emu_m512 emu_loadu_ps(const float *p) { emu_m512 r; memcpy(&r, p, sizeof r); return r; }
static inline void emu_storeu_ps(float *p, emu_m512 a) { memcpy(p, &a, sizeof a); }
static inline emu_m512 emu_mul_ps(emu_m512 a, emu_m512 b) {
    for (int i = 0; i < 16; i++) a.f[i] *= b.f[i];
    return a;
}

#define __m512i emu_m512i
#define __m512 emu_m512
#define _mm512_setzero_si512 emu_setzero_si512
#define _mm512_set1_epi64 emu_set1_epi64
#define _mm512_add_epi64 emu_add_epi64
#define _mm512_xor_si512 emu_xor_si512
#define _mm512_popcnt_epi64 emu_popcnt_epi64
#define _mm512_loadu_si512 emu_loadu_si512
#define _mm512_storeu_si512 emu_storeu_si512
#define _mm512_cvtepi64_epi32 emu_cvtepi64_epi32
#define _mm512_castsi256_si512 emu_castsi256_si512
#define _mm512_inserti64x4 emu_inserti64x4
#define _mm512_set1_epi32 emu_set1_epi32
#define _mm512_sub_epi32 emu_sub_epi32
#define _mm512_slli_epi32 emu_slli_epi32
#define _mm512_cvtepi32_ps emu_cvtepi32_ps
#define _mm512_loadu_ps emu_loadu_ps
#define _mm512_storeu_ps emu_storeu_ps
#define _mm512_mul_ps emu_mul_ps
