/* The FMA peak of this CPU per vector width, single thread and all threads:
 * 12 independent accumulators per thread, fused multiply-adds only, so the
 * loop is bound by the FMA ports. Prints GFLOP/s for 128-, 256- and 512-bit
 * vectors (Cranelift emits 128-bit ones; onnxruntime uses the widest the
 * CPU has). Build: cc -O3 -funroll-loops -mavx512f -mfma -pthread fma_peak.c -o fma_peak
 * (the accumulator loop must be unrolled so that the accumulators live in
 * registers: at -O2 they stay in memory and the loop measures store-to-load
 * forwarding, a third of the FMA ports' rate). */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 200000000L
#define ACC 12

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float sink;

#define BODY(T, SET, FMA, ADD, STORE, LANES)                                  \
    T acc[ACC];                                                               \
    for (int i = 0; i < ACC; i++) acc[i] = SET(1.0f + i * 1e-3f);             \
    T a = SET(0.999999f), b = SET(1e-7f);                                     \
    for (long it = 0; it < n; it++)                                           \
        for (int i = 0; i < ACC; i++) acc[i] = FMA(acc[i], a, b);             \
    T s = acc[0];                                                             \
    for (int i = 1; i < ACC; i++) s = ADD(s, acc[i]);                         \
    float out[LANES];                                                         \
    STORE(out, s);                                                            \
    sink += out[0];                                                           \
    return (double)n * ACC * LANES * 2;

static double w128(long n) { BODY(__m128, _mm_set1_ps, _mm_fmadd_ps, _mm_add_ps, _mm_storeu_ps, 4) }
static double w256(long n) { BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, 8) }
static double w512(long n) { BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, 16) }

typedef double (*kernel)(long);
struct job { kernel k; long n; double flops; };

static void *run(void *p) {
    struct job *j = p;
    j->flops = j->k(j->n);
    return NULL;
}

static double gflops(kernel k, long n, int threads) {
    pthread_t t[64];
    struct job j[64];
    double t0 = now(), flops = 0;
    for (int i = 0; i < threads; i++) {
        j[i] = (struct job){k, n, 0};
        pthread_create(&t[i], NULL, run, &j[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        flops += j[i].flops;
    }
    return flops / (now() - t0) / 1e9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    long n = ITERS / 16;
    const char *names[] = {"128-bit", "256-bit", "512-bit"};
    kernel ks[] = {w128, w256, w512};
    for (int w = 0; w < 3; w++) {
        double best1 = 0, bestn = 0;
        for (int r = 0; r < 3; r++) {
            double g1 = gflops(ks[w], n, 1), gn = gflops(ks[w], n, threads);
            if (g1 > best1) best1 = g1;
            if (gn > bestn) bestn = gn;
        }
        printf("%s FMA: %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d threads\n", names[w],
               best1, bestn, threads);
    }
    return sink == 12345.0f;
}
