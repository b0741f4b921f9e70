/* AMX bf16 peak: each thread asks Linux for the tile state, then runs tdpbf16ps on
 * tiles that stay in registers (2x2 output tiles of 16x16 f32, 32 bf16 per dot), the
 * ceiling for rustformers' AMX products. Usage: amx_peak (threads: OMP_NUM_THREADS). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        printf("{\"limit\": \"amx_bf16_peak\", \"error\": \"the kernel refused the AMX tile state\"}\n");
        return 1;
    }
    const long iters = 20000000;
    double t0 = seconds();
    float check = 0;
#pragma omp parallel reduction(+ : check)
    {
        struct tile_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        _tile_loadconfig(&cfg);
        static __thread uint16_t operands[4][16 * 32] __attribute__((aligned(64)));
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        _tile_loadd(4, operands[0], 64);
        _tile_loadd(5, operands[1], 64);
        _tile_loadd(6, operands[2], 64);
        _tile_loadd(7, operands[3], 64);
        for (long i = 0; i < iters; i++) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        float out[256];
        _tile_stored(0, out, 64);
        _tile_release();
        check += out[0];
    }
    double dt = seconds() - t0;
    int threads = omp_get_max_threads();
    printf("{\"limit\": \"amx_bf16_peak\", \"threads\": %d, \"gmac_per_s\": %.0f, \"check\": %g}\n",
           threads, threads * iters * 4.0 * 16 * 16 * 32 / dt / 1e9, check);
    return 0;
}
