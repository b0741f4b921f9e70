/* bf16 AVX512-BF16 peak: each thread runs 24 independent chains of vdpbf16ps (16 f32
 * lanes, each summing 2 bf16 products) held in registers, the ceiling for the bf16
 * products where AMX does not run (embeddings-bf16, quantized prefill).
 * Usage: bf16_peak (threads: OMP_NUM_THREADS). */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <omp.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CHAINS 24

int main(void) {
    const long iters = 50000000;
    double t0 = seconds();
    float check = 0;
#pragma omp parallel reduction(+ : check)
    {
        __m512 acc[CHAINS];
        __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 */
        __m512bh b = (__m512bh)_mm512_set1_epi16(0x3380); /* ~6e-8 */
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
        for (long i = 0; i < iters; i++) {
#pragma GCC unroll 24
            for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
        }
        for (int c = 0; c < CHAINS; c++) check += _mm512_reduce_add_ps(acc[c]);
    }
    double dt = seconds() - t0;
    int threads = omp_get_max_threads();
    double macs = (double)iters * CHAINS * 32 * threads;
    printf("{\"limit\": \"bf16_avx512_peak\", \"threads\": %d, \"gmac_per_s\": %.1f, \"check\": %g}\n",
           threads, macs / dt / 1e9, check);
    return 0;
}
