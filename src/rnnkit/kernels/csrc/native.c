/* rnnkit's native CPU kernels: the recurrent time loops, fused, threaded, float32.
 *
 * Why this exists (benchmarks/RESULTS.md has the measurements): through NumPy, each time
 * step's h_{t-1} W_hh^T is one BLAS call, and OpenBLAS packs all of W_hh again at every
 * call (4-7 MiB at the benchmark sizes), so the step runs at ~60 % of the machine's GEMM
 * rate; the pointwise cell math then runs on one core. Here W_hh is packed once per
 * sequence, each thread keeps its share of it and computes every gate of its own hidden
 * units, so GEMM, pointwise math and the state update of a step happen in one pass with
 * one barrier between steps.
 *
 * The library has no Python API: rnnkit/kernels/native.py loads it with ctypes (one
 * call per layer and direction, so the call cost does not matter) and keeps the NumPy
 * kernels as the reference the tests compare it with. Everything is float32.
 *
 * Threads: one pool, the calling thread plus workers that spin briefly after a job and
 * then sleep. NumPy's OpenBLAS can be handed the same pool (openblas_threads_callback),
 * so that its threads and ours never busy-wait on each other's cores.
 */
#define _GNU_SOURCE
#include <Python.h> /* only for the module stub at the end; nothing here touches Python objects */

#include <errno.h>
#include <float.h>
#include <immintrin.h> /* masked loads and stores (the fused output layer's column tails) */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define RK_EXPORT __attribute__((visibility("default")))
#define RK_MAX_THREADS 64

enum { RK_RNN_TANH = 0, RK_RNN_RELU = 1, RK_LSTM = 2, RK_GRU = 3 };

/* The exported functions' signatures, as native.py's ABI expects them: raise it whenever an
 * argument list changes, so a build left from older sources is refused, not misread.
 * 1: no rk_abi (stop 17 and before); 2: the cell loops take a lookup input (table, ids, S). */
#define RK_ABI 2
RK_EXPORT int rk_abi(void) { return RK_ABI; }

/* ====================================================================== thread pool */
typedef void (*rk_task_fn)(void *arg, int tid, int nth);

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct {
    void *ptr[RK_MAX_THREADS];
    size_t size[RK_MAX_THREADS];
} rk_scratch_t;

static struct {
    pthread_mutex_t lock; /* guards creating workers and sleeping */
    pthread_cond_t wake;
    int workers;          /* worker threads started (tid 1..workers) */
    _Atomic unsigned generation;
    _Atomic int pending;  /* participants of the current job still running */
    _Atomic int sleepers;
    _Atomic int busy;     /* a job (or an OpenBLAS call) holds the pool */
    rk_task_fn fn;
    void *arg;
    int nth;
    uint64_t spin_ns;     /* how long an idle worker spins before it sleeps */
    rk_scratch_t scratch; /* per-thread buffers of the pool's threads */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, NULL, NULL, 1, 100000, {{0}, {0}}};

static unsigned worker_start_generation[RK_MAX_THREADS];

static void *worker_main(void *p) {
    const int tid = (int)(intptr_t)p;
    /* the generation when this worker was created, not when it first runs: a job posted in
     * between must not look old to it */
    unsigned seen = worker_start_generation[tid];
    for (;;) {
        unsigned g = atomic_load(&pool.generation);
        if (g == seen) {
            uint64_t start = now_ns();
            int spins = 0;
            while ((g = atomic_load(&pool.generation)) == seen) {
                cpu_relax();
                if (++spins == 256) {
                    spins = 0;
                    if (now_ns() - start > pool.spin_ns) {
                        pthread_mutex_lock(&pool.lock);
                        atomic_fetch_add(&pool.sleepers, 1);
                        while ((g = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
                        atomic_fetch_sub(&pool.sleepers, 1);
                        pthread_mutex_unlock(&pool.lock);
                        break;
                    }
                }
            }
        }
        seen = g;
        /* every worker checks in for every job, taking part or not, so the dispatcher never
         * rewrites the job while a late worker is still reading it */
        if (tid < pool.nth) pool.fn(pool.arg, tid, pool.nth);
        atomic_fetch_sub(&pool.pending, 1);
    }
    return NULL;
}

static int ensure_workers(int nth) {
    if (nth - 1 <= pool.workers) return 1;
    pthread_mutex_lock(&pool.lock);
    while (pool.workers < nth - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        worker_start_generation[pool.workers + 1] = atomic_load(&pool.generation);
        int rc = pthread_create(&th, &attr, worker_main, (void *)(intptr_t)(pool.workers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.workers++;
    }
    int ok = pool.workers >= nth - 1;
    pthread_mutex_unlock(&pool.lock);
    return ok;
}

/* Run fn(arg, tid, nth) for tid = 0..nth-1 at the same time, tid 0 on the caller.
 * Needs the pool (busy flag) held by the caller. */
static void pool_run(rk_task_fn fn, void *arg, int nth) {
    if (nth <= 1) { fn(arg, 0, 1); return; }
    pool.fn = fn;
    pool.arg = arg;
    pool.nth = nth;
    atomic_store(&pool.pending, pool.workers);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    fn(arg, 0, nth);
    int spins = 0;
    while (atomic_load(&pool.pending) > 0) {
        cpu_relax();
        if (++spins > 4096) { sched_yield(); spins = 0; }
    }
}

/* A forked child has none of the parent's workers: start from an empty pool. */
static void pool_after_fork_child(void) {
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.workers = 0;
    atomic_store(&pool.pending, 0);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.busy, 0);
}

__attribute__((constructor)) static void pool_register_fork_handler(void) {
    pthread_atfork(NULL, NULL, pool_after_fork_child);
}

static int pool_acquire(void) {
    int expected = 0;
    return atomic_compare_exchange_strong(&pool.busy, &expected, 1);
}
static void pool_release(void) { atomic_store(&pool.busy, 0); }

/* Threads that are not the pool's (the pool was busy): started for one job, joined after. */
typedef struct { rk_task_fn fn; void *arg; int tid, nth; } oneoff_t;
static void *oneoff_main(void *p) {
    oneoff_t *o = (oneoff_t *)p;
    o->fn(o->arg, o->tid, o->nth);
    return NULL;
}
static int run_oneoff(rk_task_fn fn, void *arg, int nth) {
    pthread_t *th = (pthread_t *)malloc((size_t)nth * sizeof(pthread_t));
    oneoff_t *jobs = (oneoff_t *)malloc((size_t)nth * sizeof(oneoff_t));
    int started = 1, ok = th && jobs;
    for (int i = 1; ok && i < nth; i++) {
        jobs[i] = (oneoff_t){fn, arg, i, nth};
        if (pthread_create(&th[i], NULL, oneoff_main, &jobs[i]) != 0) break;
        started++;
    }
    if (ok && started == nth) fn(arg, 0, nth);
    for (int i = 1; i < started; i++) pthread_join(th[i], NULL); /* a missing one would never arrive */
    ok = ok && started == nth;
    free(th);
    free(jobs);
    return ok;
}

/* Run a task on nth threads at once: the pool's when it is free, else one-off threads.
 * Returns 0 only when the threads could not be had. */
static int run_parallel(rk_task_fn fn, void *arg, int nth) {
    if (nth <= 1) { fn(arg, 0, 1); return 1; }
    if (nth <= RK_MAX_THREADS && pool_acquire()) {
        int ok = ensure_workers(nth);
        if (ok) pool_run(fn, arg, nth);
        pool_release();
        if (ok) return 1;
    }
    return run_oneoff(fn, arg, nth);
}

/* A page-aligned buffer of at least `bytes` for thread tid, kept for the next call. Mapped
 * directly, not malloc'ed: a worker thread's malloc arena is capped at 64 MiB, and the
 * packed weights of a big layer exceed that. */
static float *rk_scratch(rk_scratch_t *s, int tid, size_t bytes) {
    if (bytes == 0) bytes = 64;
    if (s->size[tid] < bytes) {
        if (s->ptr[tid]) munmap(s->ptr[tid], s->size[tid]);
        size_t rounded = (bytes + 4095) / 4096 * 4096;
        void *p = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        s->ptr[tid] = p == MAP_FAILED ? NULL : p;
        s->size[tid] = s->ptr[tid] ? rounded : 0;
    }
    return (float *)s->ptr[tid];
}

static void free_scratch(rk_scratch_t *s) {
    for (int i = 0; i < RK_MAX_THREADS; i++) {
        if (s->ptr[i]) munmap(s->ptr[i], s->size[i]);
        s->ptr[i] = NULL;
        s->size[i] = 0;
    }
}

/* Sense-reversing barrier for the nth threads of one task. A thread that waits long
 * (its partner was descheduled) yields the core instead of spinning on it. */
typedef struct { _Atomic int count; _Atomic int sense; int n; } rk_barrier;

static void rk_barrier_wait(rk_barrier *b, int *local_sense) {
    if (b->n <= 1) return;
    *local_sense = !*local_sense;
    if (atomic_fetch_sub(&b->count, 1) == 1) {
        atomic_store(&b->count, b->n);
        atomic_store(&b->sense, *local_sense);
    } else {
        int spins = 0;
        while (atomic_load(&b->sense) != *local_sense) {
            cpu_relax();
            if (++spins > 20000) { sched_yield(); spins = 0; }
        }
    }
}

/* ====================================================================== OpenBLAS hook */
typedef void (*ob_dojob)(int thread_num, void *jobdata, int dispatch_type);
typedef struct { ob_dojob dojob; char *jobdata; size_t elsize; int dispatch_type; } ob_job_t;

static void ob_task(void *argp, int tid, int nth) {
    (void)nth;
    ob_job_t *j = (ob_job_t *)argp;
    j->dojob(tid, j->jobdata + (size_t)tid * j->elsize, j->dispatch_type);
}

/* openblas_threads_callback: OpenBLAS's jobs wait for each other, so all numjobs must run
 * at once, each on its own thread. */
RK_EXPORT void rk_openblas_callback(int sync, ob_dojob dojob, int numjobs, size_t elsize, void *jobdata,
                                    int dispatch_type) {
    (void)sync;
    ob_job_t job = {dojob, (char *)jobdata, elsize, dispatch_type};
    if (numjobs <= 1) { dojob(0, jobdata, dispatch_type); return; }
    if (!run_parallel(ob_task, &job, numjobs)) {
        /* cannot happen unless thread creation fails; OpenBLAS's jobs cannot run one by one */
        abort();
    }
}

/* ====================================================================== the kernels */
typedef struct {
    int T, B, H, mode;
    float *xw;
    const float *W, *b_x, *b_hh;
    float *Hs, *Cs, *aux;
    const unsigned char *mask;
    const float *table; /* (V, G) or NULL: the input projection of step t, row b is table[ids[t*B + b]] */
    const long *ids;    /* (T, B) in processing order, each in [0, V) */
    rk_barrier *barrier;
    rk_scratch_t *scratch;
    _Atomic int failed;
} rk_fwd_args;

typedef struct {
    int T, B, H, mode;
    float *gates;
    const float *W, *Hs, *Cs, *dy;
    float *aux, *dh, *dc, *dhw, *extra;
    double *dbias; /* (G,) += sum of dA over steps and rows; GRU: then (H,) of the n block's dhw */
    const unsigned char *mask;
    const long *ids; /* (T, B) in processing order, or NULL */
    float *S;        /* (V, G) or NULL: S[ids[t*B + b]] += dXW[t, b] (a lookup input's row sums) */
    rk_barrier *barrier;
    rk_scratch_t *scratch;
    _Atomic int failed;
} rk_bwd_args;

typedef struct {
    long N;
    int H, V, grad, rows;
    const float *x, *W, *bias;          /* x (N, H), W (V, H), bias (V,) or NULL */
    const long *targets;                /* (N,), each in [0, V) */
    const float *row_scale, *target_scale; /* (N,): g = row_scale * softmax - target_scale * onehot */
    double *row_loss;                   /* (N,): -log softmax(z)[target] */
    float *dx, *dW, *db;                /* (N, H) written; (V, H) and (V,) accumulated (grad only) */
    float *part;                        /* (nth, N, 3) exchanged per row: local max, sum, target logit */
    float *dxp[RK_MAX_THREADS];         /* each thread's part of dx^T (H x N), in its scratch */
    rk_barrier *barrier;
    rk_scratch_t *scratch;
    _Atomic int failed;
} rk_lx_args;

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,fma,avx2")
#define VW 16
#define MR2 12
#define MR3 8
#define MR4 6
#define ISA(x) x##_avx512
#include "cells_isa.h" /* undefines VW, MR2-4 and ISA at its end */
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define VW 8
#define MR2 6
#define MR3 3
#define MR4 2
#define ISA(x) x##_avx2
#include "cells_isa.h" /* undefines VW, MR2-4 and ISA at its end */
#pragma GCC pop_options

/* 2: AVX-512, 1: AVX2 + FMA, 0: neither (the Python side then keeps NumPy) */
static int isa_level = -1;
static int forced_level = -1;

RK_EXPORT int rk_isa(void) {
    if (forced_level >= 0) return forced_level;
    if (isa_level < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
            isa_level = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            isa_level = 1;
        else
            isa_level = 0;
    }
    return isa_level;
}

/* Use a lower instruction set than the CPU's (tests run both); -1 restores the CPU's. */
RK_EXPORT int rk_force_isa(int level) {
    forced_level = -1;
    int cpu = rk_isa();
    if (level > cpu) return -1;
    forced_level = level;
    return 0;
}

RK_EXPORT void rk_set_spin_us(int us) { pool.spin_ns = us < 0 ? 0 : (uint64_t)us * 1000u; }

static int run_cell_task(rk_task_fn task512, rk_task_fn task2, void *args, rk_barrier *bar,
                         rk_scratch_t **scratch_slot, _Atomic int *failed, int nth) {
    int level = rk_isa();
    if (level == 0) return -2;
    rk_task_fn task = level == 2 ? task512 : task2;
    int n = nth > RK_MAX_THREADS ? RK_MAX_THREADS : nth < 1 ? 1 : nth;
    if (pool_acquire()) {
        if (n > 1 && !ensure_workers(n)) n = pool.workers + 1;
        bar->n = n; /* the barrier must know the thread count before any thread starts */
        atomic_store(&bar->count, n);
        atomic_store(&bar->sense, 0);
        *scratch_slot = &pool.scratch;
        pool_run(task, args, n);
        pool_release();
    } else { /* the pool is in use by another thread: run on this one alone */
        rk_scratch_t own = {{0}, {0}};
        bar->n = 1;
        atomic_store(&bar->count, 1);
        atomic_store(&bar->sense, 0);
        *scratch_slot = &own;
        task(args, 0, 1);
        free_scratch(&own);
    }
    return atomic_load(failed) ? -1 : 0;
}

/* Forward over T steps; b_x (G,) or NULL is added to xw on the way (xw's bias). With a
 * table (V, G) and ids (T, B), step t's row b reads its input projection from
 * table[ids[t*B + b]] instead of xw, which then only receives the gates (a lookup input).
 * Returns 0, -1 (out of memory), -2 (no supported ISA). */
RK_EXPORT int rk_cell_forward(int mode, int T, int B, int H, float *xw, const float *W, const float *b_x,
                              const float *b_hh, float *Hs, float *Cs, float *aux, const unsigned char *mask,
                              const float *table, const long *ids, int nth) {
    rk_barrier bar;
    rk_fwd_args a = {T, B, H, mode, xw, W, b_x, b_hh, Hs, Cs, aux, mask, table, ids, &bar, NULL, 0};
    return run_cell_task(cell_forward_task_avx512, cell_forward_task_avx2, &a, &bar, &a.scratch, &a.failed, nth);
}

/* BPTT over T steps. dh (and dc) hold the gradient of the final state on entry and that
 * of the initial state on return. dhw: GRU scratch (2, B, 3H); extra: scratch (B, H);
 * dbias: NULL, or (G,) float64 (GRU: G + H) receiving the bias gradients. With ids (T, B)
 * and S (V, G), S[ids[t*B + b]] += dXW[t, b] on the way (a lookup input's row sums). */
RK_EXPORT int rk_cell_backward(int mode, int T, int B, int H, float *gates, const float *W, const float *Hs,
                               const float *Cs, float *aux, const float *dy, float *dh, float *dc, float *dhw,
                               float *extra, double *dbias, const unsigned char *mask,
                               const long *ids, float *S, int nth) {
    rk_barrier bar;
    rk_bwd_args a = {T, B, H, mode, gates, W, Hs, Cs, dy, aux, dh, dc, dhw, extra, dbias, mask, ids, S,
                     &bar, NULL, 0};
    return run_cell_task(cell_backward_task_avx512, cell_backward_task_avx2, &a, &bar, &a.scratch, &a.failed, nth);
}

/* ---------------------------------------------------------------------- softmax CE */
typedef struct {
    const float *z;
    long N, V;
    const long *targets;
    float *probs, *sumexp;
    double *row_loss;
    const float *row_scale, *target_scale;
    int level;
} rk_softmax_args;

static void softmax_task(void *argp, int tid, int nth) {
    rk_softmax_args *a = (rk_softmax_args *)argp;
    long r0 = a->N * tid / nth, r1 = a->N * (tid + 1) / nth;
    if (a->level == 2) softmax_rows_avx512(a->z, a->V, a->targets, r0, r1, a->probs, a->sumexp, a->row_loss);
    else softmax_rows_avx2(a->z, a->V, a->targets, r0, r1, a->probs, a->sumexp, a->row_loss);
}

static void softmax_grad_task(void *argp, int tid, int nth) {
    rk_softmax_args *a = (rk_softmax_args *)argp;
    long r0 = a->N * tid / nth, r1 = a->N * (tid + 1) / nth;
    if (a->level == 2) softmax_grad_rows_avx512(a->probs, a->V, a->targets, a->row_scale, a->target_scale, r0, r1);
    else softmax_grad_rows_avx2(a->probs, a->V, a->targets, a->row_scale, a->target_scale, r0, r1);
}

/* probs = exp(z - rowmax), sumexp, row_loss = -log softmax(z)[target]; N x V rows; probs may be z. */
RK_EXPORT int rk_softmax_forward(const float *z, long N, long V, const long *targets, float *probs, float *sumexp,
                                 double *row_loss, int nth) {
    int level = rk_isa();
    if (level == 0) return -2;
    rk_softmax_args a = {z, N, V, targets, probs, sumexp, row_loss, NULL, NULL, level};
    return run_parallel(softmax_task, &a, N < 64 ? 1 : nth > RK_MAX_THREADS ? RK_MAX_THREADS : nth) ? 0 : -1;
}

/* probs[r] *= row_scale[r]; probs[r, target[r]] -= target_scale[r]. */
RK_EXPORT int rk_softmax_backward(float *probs, long N, long V, const long *targets, const float *row_scale,
                                  const float *target_scale, int nth) {
    int level = rk_isa();
    if (level == 0) return -2;
    rk_softmax_args a = {NULL, N, V, targets, probs, NULL, NULL, row_scale, target_scale, level};
    return run_parallel(softmax_grad_task, &a, N < 64 ? 1 : nth > RK_MAX_THREADS ? RK_MAX_THREADS : nth) ? 0 : -1;
}

/* ---------------------------------------------------------------------- linear + softmax CE
 * The output layer and softmax cross-entropy in one pass (cells_isa.h, "fused linear +
 * softmax CE"): row_loss (N,) float64; with grad, dx (N, H) is written and dW (V, H), db (V,)
 * (db NULL: no bias) accumulated, for g = row_scale[r] * softmax(z_r) - target_scale[r] *
 * onehot(t_r). bias may be NULL. rows: tokens per block (a multiple of 16; 0 chooses). */
RK_EXPORT int rk_linear_xent(long N, int H, int V, const float *x, const float *W, const float *bias,
                             const long *targets, const float *row_scale, const float *target_scale,
                             double *row_loss, float *dx, float *dW, float *db, int rows, int nth) {
    if (rk_isa() == 0) return -2;
    if (N <= 0) return 0;
    int n = nth > RK_MAX_THREADS ? RK_MAX_THREADS : nth < 1 ? 1 : nth;
    if (rows <= 0) { /* Every block reads and writes all of dW: 128 tokens where dW is at most
                      * 8 MiB (it stays in the last-level cache), else 256 (on M, 26 MiB of dW:
                      * 63.8 against 70.7 ms; benchmarks/RESULTS.md, stop 19); fewer where a
                      * block's logits would exceed 16 MiB a thread */
        long vt = (long)V / n + 16;
        const int want = (long)V * H * 4 > (8L << 20) ? 256 : 128;
        rows = (int)((16L << 20) / 4 / vt) / 16 * 16;
        rows = rows < 16 ? 16 : rows > want ? want : rows;
    }
    rows = (rows + 15) / 16 * 16;
    float *part = (float *)malloc((size_t)n * (size_t)N * 3 * sizeof(float)); /* run_cell_task runs <= n threads */
    float *db_scratch = NULL;
    if (!part) return -1;
    const int grad = dx != NULL;
    if (grad && !db) { /* no bias: its gradient is still summed, into a throwaway buffer */
        db_scratch = (float *)calloc((size_t)V, sizeof(float));
        if (!db_scratch) { free(part); return -1; }
        db = db_scratch;
    }
    rk_barrier bar;
    rk_lx_args a = {N, H, V, grad, rows, x, W, bias, targets, row_scale, target_scale, row_loss, dx, dW, db, part,
                    {0}, &bar, NULL, 0};
    int rc = run_cell_task(lx_task_avx512, lx_task_avx2, &a, &bar, &a.scratch, &a.failed, n);
    free(part);
    free(db_scratch);
    return rc;
}

/* ---------------------------------------------------------------------- elementwise
 * Memory-bound passes that NumPy runs on one core. The elementwise ones round exactly as
 * NumPy does; the sum of squares adds fixed 64K-element chunks in float64, then the chunk
 * sums in order, so it does not depend on the thread count. */
typedef struct {
    float *y;
    const float *x;
    float a;
    long n, V;
    double *chunk_sums;
    int op;
    float *m, *v; /* Adam's moments */
    float k[7];   /* Adam's float32 constants: b1, 1-b1, b2, 1-b2, 1-b2^t, eps, lr/(1-b1^t) */
} rk_elem_args;

enum { RK_SUBMUL = 0, RK_SCALE = 1, RK_ADDROW = 2, RK_SUMSQ = 3, RK_ADAM = 4 };
#define RK_CHUNK 65536L

__attribute__((optimize("fp-contract=off"))) /* y - a*x rounded twice, as NumPy does */
static void elem_task(void *argp, int tid, int nth) {
    rk_elem_args *e = (rk_elem_args *)argp;
    const long unit = e->op == RK_ADDROW ? (RK_CHUNK / e->V > 0 ? RK_CHUNK / e->V : 1) : RK_CHUNK;
    const long nchunks = (e->n + unit - 1) / unit;
    const long c0 = nchunks * tid / nth, c1 = nchunks * (tid + 1) / nth;
    for (long c = c0; c < c1; c++) {
        const long i0 = c * unit, i1 = i0 + unit < e->n ? i0 + unit : e->n;
        float *restrict y = e->y;
        const float *restrict x = e->x;
        const float a = e->a;
        switch (e->op) {
        case RK_SUBMUL:
            for (long i = i0; i < i1; i++) y[i] = y[i] - a * x[i];
            break;
        case RK_SCALE:
            if (signbit(a) || !(a <= FLT_MAX)) { /* 0 * a may not be 0 here (a NaN, inf or negative): every element */
                for (long i = i0; i < i1; i++) y[i] = y[i] * a;
                break;
            }
            /* Page by page; a page of zeros is already its answer and is left unwritten, so a
             * gradient's pages that nothing wrote stay unmapped (backend.page_zeros). */
            for (long i = i0; i < i1;) {
                long end = i + (long)((4096 - ((uintptr_t)(y + i) & 4095)) / sizeof(float));
                if (end > i1) end = i1;
                int nonzero = 0;
                for (long j = i; j < end; j++) nonzero |= y[j] != 0.0f;
                if (nonzero)
                    for (long j = i; j < end; j++) y[j] = y[j] * a;
                i = end;
            }
            break;
        case RK_ADDROW: /* y (n rows of V) += x (V,); here a chunk is whole rows */
            for (long r = i0; r < i1; r++) {
                float *row = y + r * e->V;
                for (long j = 0; j < e->V; j++) row[j] = row[j] + x[j];
            }
            break;
        case RK_ADAM: { /* y = p, x = g; NumPy's order of operations and roundings, step by step */
            float *restrict m = e->m, *restrict v = e->v;
            const float b1 = e->k[0], c1 = e->k[1], b2 = e->k[2], c2 = e->k[3], bc2 = e->k[4];
            const float eps = e->k[5], step = e->k[6];
            for (long i = i0; i < i1; i++) {
                float gi = x[i];
                float mi = m[i] * b1;
                mi = mi + c1 * gi;
                float vi = v[i] * b2;
                float gg = gi * gi;
                vi = vi + c2 * gg;
                float denom = sqrtf(vi / bc2);
                denom = denom + eps;
                float r = mi / denom;
                y[i] = y[i] - step * r;
                m[i] = mi;
                v[i] = vi;
            }
            break;
        }
        case RK_SUMSQ: {
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            long i = i0;
            for (; i + 4 <= i1; i += 4) {
                double v0 = y[i], v1 = y[i + 1], v2 = y[i + 2], v3 = y[i + 3];
                s0 += v0 * v0; s1 += v1 * v1; s2 += v2 * v2; s3 += v3 * v3;
            }
            for (; i < i1; i++) s0 += (double)y[i] * y[i];
            e->chunk_sums[c] = (s0 + s1) + (s2 + s3);
            break;
        }
        }
    }
}

static int run_elem(rk_elem_args *e, int nth) {
    const long work = e->op == RK_ADDROW ? e->n * e->V : e->n;
    if (work < 4 * RK_CHUNK) nth = 1; /* too little to share */
    if (nth > RK_MAX_THREADS) nth = RK_MAX_THREADS;
    return run_parallel(elem_task, e, nth) ? 0 : -1;
}

/* y -= a * x (n elements) */
RK_EXPORT int rk_sub_scaled(float *y, float a, const float *x, long n, int nth) {
    rk_elem_args e = {y, x, a, n, 0, NULL, RK_SUBMUL, NULL, NULL, {0}};
    return run_elem(&e, nth);
}

/* y *= a */
RK_EXPORT int rk_scale(float *y, float a, long n, int nth) {
    rk_elem_args e = {y, NULL, a, n, 0, NULL, RK_SCALE, NULL, NULL, {0}};
    return run_elem(&e, nth);
}

/* y (N, V) += b (V,) on every row; rows are the unit of work (n counts rows) */
RK_EXPORT int rk_add_rows(float *y, const float *b, long N, long V, int nth) {
    rk_elem_args e = {y, b, 0.0f, N, V, NULL, RK_ADDROW, NULL, NULL, {0}};
    return run_elem(&e, nth);
}

/* One Adam step over n elements: m, v updated, p -= step * m / (sqrt(v / bc2) + eps);
 * k = {b1, 1-b1, b2, 1-b2, bc2 = 1-b2^t, eps, step = lr / (1-b1^t)}, each rounded to float32. */
RK_EXPORT int rk_adam(float *p, const float *g, float *m, float *v, long n, const float *k, int nth) {
    rk_elem_args e = {p, g, 0.0f, n, 0, NULL, RK_ADAM, m, v, {k[0], k[1], k[2], k[3], k[4], k[5], k[6]}};
    return run_elem(&e, nth);
}

/* sum(x^2) in float64; -1 when its small buffer cannot be had */
RK_EXPORT double rk_sum_squares(const float *x, long n, int nth) {
    const long nchunks = (n + RK_CHUNK - 1) / RK_CHUNK;
    double *sums = (double *)malloc((size_t)(nchunks > 0 ? nchunks : 1) * sizeof(double));
    if (!sums) return -1.0;
    rk_elem_args e = {(float *)x, NULL, 0.0f, n, 0, sums, RK_SUMSQ, NULL, NULL, {0}};
    double total = 0.0;
    if (run_elem(&e, nth) == 0)
        for (long c = 0; c < nchunks; c++) total += sums[c];
    else
        total = -1.0;
    free(sums);
    return total;
}


/* ====================================================================== module stub */
static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "_native",
                                           "rnnkit's native CPU kernels (loaded through ctypes by native.py)",
                                           -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
