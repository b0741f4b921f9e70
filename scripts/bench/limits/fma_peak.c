/* f32 AVX-512 peak: each thread runs 24 independent chains of 16-lane fused
 * multiply-adds held in registers, the ceiling for f32 products (embeddings-f32,
 * train-seqcls). Usage: fma_peak (threads: OMP_NUM_THREADS). */
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
    const long iters = 100000000;
    double t0 = seconds();
    float check = 0;
#pragma omp parallel reduction(+ : check)
    {
        __m512 acc[CHAINS];
        __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
        for (long i = 0; i < iters; i++) {
#pragma GCC unroll 24
            for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
        }
        for (int c = 0; c < CHAINS; c++) check += _mm512_reduce_add_ps(acc[c]);
    }
    double dt = seconds() - t0;
    int threads = omp_get_max_threads();
    double macs = (double)iters * CHAINS * 16 * threads;
    printf("{\"limit\": \"f32_fma_peak\", \"threads\": %d, \"gmac_per_s\": %.1f, \"check\": %g}\n",
           threads, macs / dt / 1e9, check);
    return 0;
}
