/* Memory read bandwidth: every thread sums its share of a buffer with AVX-512 loads;
 * the best of 10 passes. A buffer much larger than the caches gives the DRAM figure
 * that bounds f32 decoding (every weight is read once per token).
 * Usage: read_bandwidth MEGABYTES (threads: OMP_NUM_THREADS). */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    size_t n = mb * 1024 * 1024 / sizeof(float);
    n -= n % 32;
    float *buf = aligned_alloc(64, n * sizeof(float));
    if (!buf) return 1;
    for (size_t i = 0; i < n; i++) buf[i] = 1.0f;
    double best = 1e30, check = 0;
    for (int pass = 0; pass < 10; pass++) {
        double t0 = seconds();
        float total = 0;
#pragma omp parallel reduction(+ : total)
        {
            __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 32) {
                a = _mm512_add_ps(a, _mm512_load_ps(buf + i));
                b = _mm512_add_ps(b, _mm512_load_ps(buf + i + 16));
            }
            total += _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        }
        double dt = seconds() - t0;
        check += total;
        if (dt < best) best = dt;
    }
    printf("{\"limit\": \"read_bandwidth\", \"buffer_mb\": %zu, \"gb_per_s\": %.1f, \"check\": %.0f}\n",
           mb, n * sizeof(float) / best / 1e9, check);
    free(buf);
    return 0;
}
