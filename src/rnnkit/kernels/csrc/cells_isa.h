/* The recurrent time loops and their pieces, written once for any vector width.
 *
 * native.c includes this file once per instruction set, with
 *   VW      floats per vector register (16: AVX-512, 8: AVX2)
 *   ISA(x)  the name of symbol x for that instruction set (x ## _avx512, ...)
 *   MR2, MR3, MR4   rows of a GEMM tile NV = 2, 3, 4 vectors wide (as many accumulators
 *                   as the register file holds, with room for the B row and a broadcast)
 * inside a `#pragma GCC target(...)` region, so each copy is compiled for its own ISA
 * and the library still loads (and falls back to NumPy) on a CPU that lacks it.
 *
 * Shapes follow unroll.py: time-major, row-major, float32. G = gates * H.
 *   xw    (T, B, G)  x_t W_ih^T + b (LSTM/RNN: both biases, GRU: b_ih only); the forward
 *                    writes the activated gates over it (LSTM: i f g o, GRU: r z n)
 *   W     (G, H)     W_hh as PyTorch stores it: h_{t-1} W_hh^T is the recurrent term
 *   Hs    (T+1, B, H) hidden states, Hs[0] = h0;  Cs (T+1, B, H) LSTM cell states
 * Threads split the hidden units into chunks of whole vectors; a thread computes every
 * gate of its units, so each step needs one barrier: after it, h_t is complete.
 */

typedef float ISA(vf) __attribute__((vector_size(VW * 4)));
typedef int ISA(vi) __attribute__((vector_size(VW * 4)));
typedef float ISA(vfu) __attribute__((vector_size(VW * 4), aligned(4)));
#define vf ISA(vf)
#define vi ISA(vi)
#define vfu ISA(vfu)

static inline vf ISA(ld)(const float *p) { return *(const vfu *)p; }
static inline void ISA(st)(float *p, vf v) { *(vfu *)p = v; }
/* broadcast: (vf){0} + s would be a real addition (-0 + 0 = +0), not a broadcast */
static inline vf ISA(bc)(float s) { vf v = {s}; return __builtin_shuffle(v, (vi){0}); }

/* the first n (< VW) lanes from or to memory; the other lanes read as 0 */
static inline vf ISA(ldn)(const float *p, int n) {
    if (n >= VW) return ISA(ld)(p);
    float tmp[VW] __attribute__((aligned(64))) = {0};
    for (int j = 0; j < n; j++) tmp[j] = p[j];
    return *(vf *)tmp;
}
static inline void ISA(stn)(float *p, vf v, int n) {
    if (n >= VW) { ISA(st)(p, v); return; }
    float tmp[VW] __attribute__((aligned(64)));
    *(vf *)tmp = v;
    for (int j = 0; j < n; j++) p[j] = tmp[j];
}
#define LD ISA(ld)
#define LDN ISA(ldn)
#define STN ISA(stn)
#define BC ISA(bc)

static inline vf ISA(select)(vi mask, vf a, vf b) { /* mask ? a : b, lane by lane */
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* exp(x) for x <= 0 (Cody-Waite reduction, Cephes' degree-6 polynomial, ~1 ulp).
 * Below -87.3 the result is 0; NaN stays NaN. */
static inline vf ISA(exp_neg)(vf x) {
    const vf magic = BC(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf t = x * 1.44269504088896341f + magic;
    vf n = t - magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = BC(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vi k = (vi)t - 0x4B400000;          /* the integer n, from t's mantissa */
    vf scale = (vf)((k + 127) << 23);   /* 2^n, for n >= -126 */
    vf y = p * scale;
    vi tiny = x < -87.3f;               /* false for NaN */
    return ISA(select)(tiny, BC(0.0f), y);
}

/* tanh with ~2 ulp: Cephes' odd polynomial for |x| < 0.625, else (1 - e) / (1 + e) with
 * e = exp(-2|x|) (never overflows); the sign copied back. NaN stays NaN. */
static inline vf ISA(vtanh)(vf x) {
    const vi sign_bit = (vi){0} + (int)0x80000000;
    vf ax = (vf)((vi)x & ~sign_bit);
    vf z = x * x;
    vf ps = BC(-5.70498872745e-3f);
    ps = ps * z + 2.06390887954e-2f;
    ps = ps * z - 5.37397155531e-2f;
    ps = ps * z + 1.33314422036e-1f;
    ps = ps * z - 3.33332819422e-1f;
    ps = ps * z * x + x;
    vf e = ISA(exp_neg)(ax * -2.0f);
    vf pl = (1.0f - e) / (1.0f + e);
    pl = (vf)((vi)pl | ((vi)x & sign_bit));
    return ISA(select)(ax < 0.625f, ps, pl);
}

/* sigma(x) = 0.5 tanh(x / 2) + 0.5, as the NumPy kernels compute it */
static inline vf ISA(vsig)(vf x) { return ISA(vtanh)(x * 0.5f) * 0.5f + 0.5f; }

/* relu that keeps NaN: x where x > 0 or x is NaN, else +0 */
static inline vf ISA(vrelu)(vf x) {
    vi keep = (x > 0.0f) | (x != x);
    return (vf)((vi)x & keep);
}

/* ------------------------------------------------------------------ GEMM tiles
 * out[m x NV*VW] = A[m x K] @ Bp[K x NV*VW]. Both operands packed: Ap k-major
 * (Ap[k*m + i] = A[i][k], so a tile's broadcasts read one cache line after another
 * whatever A's row stride: rows 8 KiB apart would all fall in one L1 set) and Bp in
 * panels (64-byte aligned). m and NV are compile-time constants in each instance, so
 * the accumulators stay in registers. */
#define DEFINE_TILE(NV, M)                                                                  \
    static void ISA(tile_##NV##_##M)(int K, const float *restrict Ap, const float *restrict Bp, \
                                      float *restrict out) {                                \
        vf acc[M][NV];                                                                      \
        _Pragma("GCC unroll 16") for (int i = 0; i < M; i++)                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[i][j] = (vf){0};       \
        _Pragma("GCC unroll 2") for (int k = 0; k < K; k++) {                               \
            vf b[NV];                                                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                            \
                b[j] = *(const vf *)(Bp + (long)k * (NV * VW) + j * VW);                    \
            _Pragma("GCC unroll 16") for (int i = 0; i < M; i++) {                          \
                vf a = BC(Ap[(long)k * M + i]);                                             \
                _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[i][j] += a * b[j]; \
            }                                                                               \
        }                                                                                   \
        _Pragma("GCC unroll 16") for (int i = 0; i < M; i++)                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++)                            \
                *(vf *)(out + (i * NV + j) * VW) = acc[i][j];                               \
    }

typedef void (*ISA(tile_fn))(int, const float *, const float *, float *);

#define DEFINE_TILES(NV)                                                                  \
    DEFINE_TILE(NV, 1) DEFINE_TILE(NV, 2) DEFINE_TILE(NV, 3) DEFINE_TILE(NV, 4)           \
    DEFINE_TILE(NV, 5) DEFINE_TILE(NV, 6) DEFINE_TILE(NV, 7) DEFINE_TILE(NV, 8)           \
    DEFINE_TILE(NV, 9) DEFINE_TILE(NV, 10) DEFINE_TILE(NV, 11) DEFINE_TILE(NV, 12)
DEFINE_TILES(2)
DEFINE_TILES(3)
DEFINE_TILES(4)
/* index m: the instance for m rows (only m <= MR{NV} are ever called) */
#define TILE_TABLE(NV)                                                                    \
    {0, ISA(tile_##NV##_1), ISA(tile_##NV##_2), ISA(tile_##NV##_3), ISA(tile_##NV##_4),   \
     ISA(tile_##NV##_5), ISA(tile_##NV##_6), ISA(tile_##NV##_7), ISA(tile_##NV##_8),      \
     ISA(tile_##NV##_9), ISA(tile_##NV##_10), ISA(tile_##NV##_11), ISA(tile_##NV##_12)}
static const ISA(tile_fn) ISA(tiles2)[13] = TILE_TABLE(2);
static const ISA(tile_fn) ISA(tiles3)[13] = TILE_TABLE(3);
static const ISA(tile_fn) ISA(tiles4)[13] = TILE_TABLE(4);

static ISA(tile_fn) ISA(tile_for)(int nv, int m) {
    switch (nv) {
    case 2: return ISA(tiles2)[m];
    case 3: return ISA(tiles3)[m];
    default: return ISA(tiles4)[m];
    }
}

static int ISA(max_rows)(int nv) { return nv == 2 ? MR2 : nv == 3 ? MR3 : MR4; }

/* rows [r0, r0 + m) of block `blk` when B rows are cut into nblk nearly equal blocks */
static inline void ISA(row_block)(int B, int nblk, int blk, int *r0, int *m) {
    int base = B / nblk, extra = B % nblk;
    *r0 = blk * base + (blk < extra ? blk : extra);
    *m = base + (blk < extra);
}

/* All B rows of A (row stride lda, K columns) as nblk k-major blocks, one after another:
 * block blk (rows r0..r0+m-1) starts at Ap + r0 * K and holds Ap[k*m + i] = A[r0+i][k]. */
static void ISA(pack_rows)(const float *A, long lda, int B, int K, int nblk, float *Ap) {
    for (int blk = 0; blk < nblk; blk++) {
        int r0, m;
        ISA(row_block)(B, nblk, blk, &r0, &m);
        float *dst = Ap + (long)r0 * K;
        for (int i = 0; i < m; i++) {
            const float *src = A + (long)(r0 + i) * lda;
            for (int k = 0; k < K; k++) dst[(long)k * m + i] = src[k];
        }
    }
}

/* ------------------------------------------------------------------ packing
 * Forward panel p of a thread: its unit chunk [u0, u0 + UV*VW) for every gate, as
 * columns [gate 0: UV vectors][gate 1: ...], NR = gates * UV * VW of them, stored as
 * nsub sub-panels of SW = NR / nsub columns each, one after another (K x SW each):
 * Bp[s][k][j] = W[gate*H + u][k] for column s*SW + j = gate*CU + (u - u0) (0 past H).
 * The LSTM's 4 gate vectors go in two sub-panels of 2, so its GEMM runs as two tiles of
 * 2 vectors x MR2 rows: half the panel bytes per FMA of one 4-vector x MR4-row tile. */
static void ISA(pack_forward)(const float *W, int H, int gates, int uv, int nsub, int c0, int c1, float *Bp) {
    const int CU = uv * VW, NR = gates * CU, SW = NR / nsub;
    for (int c = c0; c < c1; c++) {
        float *panel = Bp + (long)(c - c0) * H * NR;
        for (int g = 0; g < gates; g++)
            for (int j = 0; j < CU; j++) {
                int u = c * CU + j, colm = g * CU + j;
                float *col = panel + (long)(colm / SW) * H * SW + colm % SW;
                if (u < H) {
                    const float *row = W + ((long)g * H + u) * H;
                    for (int k = 0; k < H; k++) col[(long)k * SW] = row[k];
                } else {
                    for (int k = 0; k < H; k++) col[(long)k * SW] = 0.0f;
                }
            }
    }
}

/* Backward panel: units [u0, u0 + 2*VW) of W (G x H) as is: Bp[k][j] = W[k][u0 + j]. */
static void ISA(pack_backward)(const float *W, int G, int H, int c0, int c1, float *Bp) {
    const int NR = 2 * VW;
    for (int c = c0; c < c1; c++) {
        float *panel = Bp + (long)(c - c0) * G * NR;
        int u0 = c * NR, n = H - u0 < NR ? H - u0 : NR;
        for (int k = 0; k < G; k++) {
            const float *src = W + (long)k * H + u0;
            float *dst = panel + (long)k * NR;
            int j = 0;
            for (; j < n; j++) dst[j] = src[j];
            for (; j < NR; j++) dst[j] = 0.0f;
        }
    }
}

/* the chunks [c0, c1) of thread tid when nchunks are shared among nth threads */
static inline void ISA(my_chunks)(int nchunks, int tid, int nth, int *c0, int *c1) {
    *c0 = (int)((long)nchunks * tid / nth);
    *c1 = (int)((long)nchunks * (tid + 1) / nth);
}

/* ------------------------------------------------------------------ forward */
static void ISA(cell_forward_task)(void *argp, int tid, int nth) {
    rk_fwd_args *a = (rk_fwd_args *)argp;
    const int T = a->T, B = a->B, H = a->H, mode = a->mode;
    const int gates = mode == RK_LSTM ? 4 : mode == RK_GRU ? 3 : 1;
    const int uv = gates == 1 ? 2 : 1; /* the RNN's panel holds two vectors of units */
    const int NV = gates * uv, CU = uv * VW, NR = NV * VW, G = gates * H;
    const int nsub = NV == 4 ? 2 : 1, NVS = NV / nsub, SW = NR / nsub; /* sub-panels, see pack_forward */
    const int nchunks = (H + CU - 1) / CU;
    int c0, c1;
    ISA(my_chunks)(nchunks, tid, nth, &c0, &c1);
    const size_t bp_floats = ((size_t)(c1 - c0) * H * NR + 15) / 16 * 16;
    float *Bp = rk_scratch(a->scratch, tid, (bp_floats + (size_t)B * H) * sizeof(float));
    if (!Bp) a->failed = 1;
    float *Ap = Bp ? Bp + bp_floats : NULL;
    if (Bp) ISA(pack_forward)(a->W, H, gates, uv, nsub, c0, c1, Bp);
    const int mr = ISA(max_rows)(NVS), nblk = (B + mr - 1) / mr;
    const float *bx = a->b_x;
    float tile[16 * 4 * VW] __attribute__((aligned(64)));
    int sense = 0;

    for (int t = 0; t < T; t++) {
        const float *hprev = a->Hs + (long)t * B * H;
        float *hnext = a->Hs + (long)(t + 1) * B * H;
        const unsigned char *mask = a->mask ? a->mask + (long)t * B : NULL;
        if (Bp && c1 > c0) ISA(pack_rows)(hprev, H, B, H, nblk, Ap);
        for (int c = c0; c < c1 && Bp; c++) {
            const float *panel = Bp + (long)(c - c0) * H * NR;
            for (int blk = 0; blk < nblk; blk++) {
                int r0, m;
                ISA(row_block)(B, nblk, blk, &r0, &m);
                for (int sp = 0; sp < nsub; sp++) /* sub-panel sp's tile: m rows of SW at tile + sp*m*SW */
                    ISA(tile_for)(NVS, m)(H, Ap + (long)r0 * H, panel + (long)sp * H * SW, tile + sp * m * SW);
                for (int i = 0; i < m; i++) {
                    const int b = r0 + i;
                    /* ACC(col): row i's accumulator of panel column col, in sub-panel col / SW's tile */
#define ACC(col) (tile + ((col) / SW) * m * SW + (long)i * SW + (col) % SW)
                    float *x = a->xw + ((long)t * B + b) * G;
                    /* the step's input projection: xw's row, or the projected table's row of the
                     * step's id (a lookup input; xw then only receives the gates) */
                    const float *xs = a->table ? a->table + a->ids[(long)t * B + b] * G : x;
                    const int pad = mask && !mask[b]; /* padded step: the state is carried */
                    for (int v = 0; v < uv; v++) {
                        const int u = c * CU + v * VW;
                        if (u >= H) break;
                        const int n = H - u < VW ? H - u : VW;
                        const long su = (long)b * H + u;
                        if (mode == RK_LSTM) {
                            vf pi = LD(ACC(0 * VW)) + LDN(xs + u, n), pf = LD(ACC(1 * VW)) + LDN(xs + H + u, n);
                            vf pg = LD(ACC(2 * VW)) + LDN(xs + 2 * H + u, n), po = LD(ACC(3 * VW)) + LDN(xs + 3 * H + u, n);
                            if (bx) {
                                pi += LDN(bx + u, n); pf += LDN(bx + H + u, n);
                                pg += LDN(bx + 2 * H + u, n); po += LDN(bx + 3 * H + u, n);
                            }
                            vf ai = ISA(vsig)(pi), af = ISA(vsig)(pf), ag = ISA(vtanh)(pg), ao = ISA(vsig)(po);
                            const float *cprev = a->Cs + (long)t * B * H;
                            float *cnext = a->Cs + (long)(t + 1) * B * H;
                            vf cp = LDN(cprev + su, n);
                            vf cc = af * cp + ai * ag;
                            vf tc = ISA(vtanh)(cc);
                            vf h = ao * tc;
                            STN(x + u, ai, n);
                            STN(x + H + u, af, n);
                            STN(x + 2 * H + u, ag, n);
                            STN(x + 3 * H + u, ao, n);
                            STN(a->aux + (long)t * B * H + su, tc, n);
                            if (pad) { cc = cp; h = LDN(hprev + su, n); }
                            STN(cnext + su, cc, n);
                            STN(hnext + su, h, n);
                        } else if (mode == RK_GRU) {
                            vf hr = LD(ACC(0 * VW)), hz = LD(ACC(1 * VW)), hn = LD(ACC(2 * VW));
                            if (a->b_hh) {
                                hr += LDN(a->b_hh + u, n);
                                hz += LDN(a->b_hh + H + u, n);
                                hn += LDN(a->b_hh + 2 * H + u, n);
                            }
                            vf xr = LDN(xs + u, n), xz = LDN(xs + H + u, n), xn = LDN(xs + 2 * H + u, n);
                            if (bx) { xr += LDN(bx + u, n); xz += LDN(bx + H + u, n); xn += LDN(bx + 2 * H + u, n); }
                            vf r = ISA(vsig)(xr + hr);
                            vf z = ISA(vsig)(xz + hz);
                            vf nn = ISA(vtanh)(xn + r * hn);
                            vf hp = LDN(hprev + su, n);
                            vf h = (hp - nn) * z + nn;
                            STN(x + u, r, n);
                            STN(x + H + u, z, n);
                            STN(x + 2 * H + u, nn, n);
                            STN(a->aux + (long)t * B * H + su, hn, n);
                            STN(hnext + su, pad ? hp : h, n);
                        } else {
                            vf pre = LD(ACC(v * VW)) + LDN(xs + u, n);
                            if (bx) pre += LDN(bx + u, n);
                            vf h = mode == RK_RNN_RELU ? ISA(vrelu)(pre) : ISA(vtanh)(pre);
                            STN(hnext + su, pad ? LDN(hprev + su, n) : h, n);
                        }
                    }
#undef ACC
                }
            }
        }
        rk_barrier_wait(a->barrier, &sense);
    }
}

/* ------------------------------------------------------------------ backward
 * Per step, each thread: (1) the pointwise gradients of its units (they need only dh of
 * its own units, which its GEMM wrote the step before), written as dA_t over the cached
 * gates; (2) a barrier, after which all of dA_t exists; (3) dh_{t-1} of its units,
 * dA_t @ W_hh[:, units], plus what bypasses W_hh (the GRU's z * dh, a padded step's dh). */
static void ISA(cell_backward_task)(void *argp, int tid, int nth) {
    rk_bwd_args *a = (rk_bwd_args *)argp;
    const int T = a->T, B = a->B, H = a->H, mode = a->mode;
    const int gates = mode == RK_LSTM ? 4 : mode == RK_GRU ? 3 : 1;
    const int G = gates * H, NR = 2 * VW;
    const int nchunks = (H + NR - 1) / NR;
    int c0, c1;
    ISA(my_chunks)(nchunks, tid, nth, &c0, &c1);
    const size_t bp_floats = ((size_t)(c1 - c0) * G * NR + 15) / 16 * 16;
    const size_t ap_floats = ((size_t)B * G + 15) / 16 * 16;
    float *Bp = rk_scratch(a->scratch, tid, (bp_floats + ap_floats + (size_t)G + H) * sizeof(float));
    if (!Bp) a->failed = 1;
    float *Ap = Bp ? Bp + bp_floats : NULL;
    float *step_db = Bp ? Bp + bp_floats + ap_floats : NULL; /* this step's bias gradients, my columns */
    if (Bp) ISA(pack_backward)(a->W, G, H, c0, c1, Bp);
    const int u_lo = c0 * NR < H ? c0 * NR : H, u_hi = c1 * NR < H ? c1 * NR : H;
    const int mr = ISA(max_rows)(2), nblk = (B + mr - 1) / mr;
    float tile[16 * 4 * VW] __attribute__((aligned(64)));
    float *dh = a->dh, *dc = a->dc, *extra = a->extra;
    int sense = 0;

    for (int t = T - 1; t >= 0; t--) {
        const unsigned char *mask = a->mask ? a->mask + (long)t * B : NULL;
        float *gt = a->gates + (long)t * B * G;               /* gates in, dA_t out */
        float *dhw = a->dhw ? a->dhw + (long)(t & 1) * B * G : NULL; /* GRU, double-buffered */
        /* (1) pointwise, units [u_lo, u_hi) of every row */
        if (a->dbias && step_db) {
            for (int g = 0; g < gates; g++)
                for (int u = u_lo; u < u_hi; u++) step_db[g * H + u] = 0.0f;
            for (int u = u_lo; u < u_hi; u++) step_db[G + u] = 0.0f;
        }
        for (int b = 0; b < B; b++) {
            const int pad = mask && !mask[b];
            float *grow = gt + (long)b * G;
            for (int u = u_lo; u < u_hi; u += VW) {
                const int n = u_hi - u < VW ? u_hi - u : VW;
                const long su = (long)b * H + u;
                vf dhv = LDN(dh + su, n);
                vf g = a->dy ? dhv + LDN(a->dy + (long)t * B * H + su, n) : dhv;
                vf pass = BC(0.0f);
                if (pad) { pass = dhv; g = BC(0.0f); }
                if (mode == RK_LSTM) {
                    vf i = LDN(grow + u, n), f = LDN(grow + H + u, n);
                    vf gg = LDN(grow + 2 * H + u, n), o = LDN(grow + 3 * H + u, n);
                    vf tc = LDN(a->aux + (long)t * B * H + su, n);
                    vf cp = LDN(a->Cs + (long)t * B * H + su, n);
                    vf dcv = LDN(dc + su, n), dc_pass = BC(0.0f);
                    if (pad) { dc_pass = dcv; dcv = BC(0.0f); }
                    vf dct = (1.0f - tc * tc) * o * g + dcv;
                    vf d_i = dct * gg * (i * (1.0f - i)), d_f = dct * cp * (f * (1.0f - f));
                    vf d_g = dct * i * (1.0f - gg * gg), d_o = g * tc * (o * (1.0f - o));
                    STN(grow + u, d_i, n);
                    STN(grow + H + u, d_f, n);
                    STN(grow + 2 * H + u, d_g, n);
                    STN(grow + 3 * H + u, d_o, n);
                    if (a->dbias) {
                        STN(step_db + u, LDN(step_db + u, n) + d_i, n);
                        STN(step_db + H + u, LDN(step_db + H + u, n) + d_f, n);
                        STN(step_db + 2 * H + u, LDN(step_db + 2 * H + u, n) + d_g, n);
                        STN(step_db + 3 * H + u, LDN(step_db + 3 * H + u, n) + d_o, n);
                    }
                    STN(dc + su, dct * f + dc_pass, n);
                    STN(extra + su, pass, n);
                } else if (mode == RK_GRU) {
                    vf r = LDN(grow + u, n), z = LDN(grow + H + u, n), nn = LDN(grow + 2 * H + u, n);
                    vf hwn = LDN(a->aux + (long)t * B * H + su, n);
                    vf hp = LDN(a->Hs + (long)t * B * H + su, n);
                    vf dan = g * (1.0f - z) * (1.0f - nn * nn);
                    vf daz = g * (hp - nn) * (z * (1.0f - z));
                    vf dar = dan * hwn * (r * (1.0f - r));
                    vf danr = dan * r;
                    STN(grow + u, dar, n);
                    STN(grow + H + u, daz, n);
                    STN(grow + 2 * H + u, dan, n);
                    float *drow = dhw + (long)b * G;
                    STN(drow + u, dar, n);
                    STN(drow + H + u, daz, n);
                    STN(drow + 2 * H + u, danr, n);
                    STN(a->aux + (long)t * B * H + su, danr, n);
                    STN(extra + su, pass + g * z, n);
                    if (a->dbias) {
                        STN(step_db + u, LDN(step_db + u, n) + dar, n);
                        STN(step_db + H + u, LDN(step_db + H + u, n) + daz, n);
                        STN(step_db + 2 * H + u, LDN(step_db + 2 * H + u, n) + dan, n);
                        STN(step_db + G + u, LDN(step_db + G + u, n) + danr, n);
                    }
                } else {
                    vf h = LDN(a->Hs + (long)(t + 1) * B * H + su, n);
                    vf da;
                    if (mode == RK_RNN_RELU) da = g * ISA(select)(h > 0.0f, BC(1.0f), BC(0.0f));
                    else da = g * (1.0f - h * h);
                    STN(grow + u, da, n);
                    STN(extra + su, pass, n);
                    if (a->dbias) STN(step_db + u, LDN(step_db + u, n) + da, n);
                }
                if (a->S) { /* a lookup input: S[id] += the row's dXW (gates 0..gates-1), my units */
                    float *srow = a->S + a->ids[(long)t * B + b] * G;
                    for (int q = 0; q < gates; q++)
                        STN(srow + q * H + u, LDN(srow + q * H + u, n) + LDN(grow + q * H + u, n), n);
                }
            }
        }
        if (a->dbias && step_db) { /* float over the B rows of a step, float64 across steps */
            for (int g = 0; g < gates; g++)
                for (int u = u_lo; u < u_hi; u++) a->dbias[g * H + u] += step_db[g * H + u];
            if (mode == RK_GRU)
                for (int u = u_lo; u < u_hi; u++) a->dbias[G + u] += step_db[G + u];
        }
        rk_barrier_wait(a->barrier, &sense);
        /* (3) dh_{t-1}[:, units] = dA_t @ W_hh[:, units] + extra */
        const float *Aop = mode == RK_GRU ? dhw : gt;
        if (Bp && c1 > c0) ISA(pack_rows)(Aop, G, B, G, nblk, Ap);
        for (int c = c0; c < c1 && Bp; c++) {
            const float *panel = Bp + (long)(c - c0) * G * NR;
            const int u0 = c * NR;
            for (int blk = 0; blk < nblk; blk++) {
                int r0, m;
                ISA(row_block)(B, nblk, blk, &r0, &m);
                ISA(tile_for)(2, m)(G, Ap + (long)r0 * G, panel, tile);
                for (int i = 0; i < m; i++) {
                    const long row = (long)(r0 + i) * H;
                    for (int v = 0; v < 2; v++) {
                        const int u = u0 + v * VW;
                        if (u >= H) break;
                        const int n = H - u < VW ? H - u : VW;
                        STN(dh + row + u, LD(tile + (long)i * NR + v * VW) + LDN(extra + row + u, n), n);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ softmax cross-entropy
 * Rows [r0, r1) of the (N, V) logits: e = exp(z - max) into `probs`, sumexp and the
 * per-row loss -log softmax(z)[target]. */
static void ISA(softmax_rows)(const float *z, long V, const long *targets, long r0, long r1,
                              float *probs, float *sumexp, double *row_loss) {
    for (long r = r0; r < r1; r++) {
        const float *zr = z + r * V;
        float *er = probs + r * V;
        const float zt = zr[targets[r]]; /* read first: probs may be z itself (in place) */
        vf vmax = BC(-INFINITY);
        long j = 0;
        for (; j + VW <= V; j += VW) {
            vf v = LD(zr + j);
            vmax = ISA(select)(v > vmax, v, vmax);
            vmax = ISA(select)(v != v, v, vmax); /* NaN wins */
        }
        float mx = -INFINITY;
        for (int l = 0; l < VW; l++) {
            float s = vmax[l];
            if (s > mx || s != s) mx = s;
            if (mx != mx) break;
        }
        for (; j < V; j++) if (zr[j] > mx || zr[j] != zr[j]) { mx = zr[j]; if (mx != mx) break; }
        vf acc = BC(0.0f);
        const vf vm = BC(mx);
        j = 0;
        for (; j + VW <= V; j += VW) {
            vf e = ISA(exp_neg)(LD(zr + j) - vm);
            ISA(st)(er + j, e);
            acc += e;
        }
        float s = 0.0f;
        for (int l = 0; l < VW; l++) s += acc[l];
        if (j < V) {
            vf e = ISA(exp_neg)(LDN(zr + j, (int)(V - j)) - vm);
            STN(er + j, e, (int)(V - j));
            for (long l = 0; l < V - j; l++) s += e[l];
        }
        sumexp[r] = s;
        row_loss[r] = (double)logf(s) - (double)(zt - mx);
    }
}

/* probs (rows [r0, r1)) *= row_scale[r], then probs[r, target] -= target_scale[r] */
static void ISA(softmax_grad_rows)(float *probs, long V, const long *targets, const float *row_scale,
                                   const float *target_scale, long r0, long r1) {
    for (long r = r0; r < r1; r++) {
        float *er = probs + r * V;
        const vf s = BC(row_scale[r]);
        long j = 0;
        for (; j + VW <= V; j += VW) ISA(st)(er + j, LD(er + j) * s);
        for (; j < V; j++) er[j] *= row_scale[r];
        er[targets[r]] -= target_scale[r];
    }
}

/* ------------------------------------------------------------------ fused linear + softmax CE
 * The output layer and its loss for a big vocabulary and a small hidden size (the
 * benchmark's S: V 10000, H 100), where OpenBLAS runs the three GEMMs at ~65 % of its
 * square-GEMM rate (K or N is 100) and the (N, V) logits make three trips through memory.
 * Here the threads split the vocabulary and take the tokens in blocks small enough that a
 * block's logits stay in cache, where they become exp(z - max), then the gradient, then
 * feed dW and dx, without a trip to memory and without a copy of W. One barrier per block
 * exchanges each token's local max and sum of exponentials. */

/* the first n (1..VW) lanes, masked (the others are neither read nor written) */
#if VW == 16
static inline vf ISA(ldm)(const float *p, int n) {
    return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
}
static inline void ISA(stm)(float *p, vf v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v); }
#else
static inline __m256i ISA(lanes)(int n) { const vi idx = {0, 1, 2, 3, 4, 5, 6, 7}; return (__m256i)(idx < n); }
static inline vf ISA(ldm)(const float *p, int n) { return (vf)_mm256_maskload_ps(p, ISA(lanes)(n)); }
static inline void ISA(stm)(float *p, vf v, int n) { _mm256_maskstore_ps(p, ISA(lanes)(n), (__m256)v); }
#endif

/* C[i][j] (+)= sum_k A(i, k) B[k*ldb + j] for i < M, j < NV*VW, C's rows ldc apart; the
 * last vector of each row of B and C has `nlast` lanes (so B and C can be W, x and dW as
 * they are, H columns a row). A(i, k) is A[k*lda + i] (KM: k-major, one cache line per k)
 * or A[i*lda + k] (IM: M row pointers). accumulate = 0: C = A B. */
#define DEFINE_FT(NAME, AIDX, NV, M)                                                           \
    static void ISA(NAME##_##NV##_##M)(int K, const float *restrict A, long lda,                \
                                        const float *restrict B, long ldb, float *restrict C,    \
                                        long ldc, int nlast, int accumulate) {                   \
        vf acc[M][NV];                                                                         \
        if (accumulate) {                                                                      \
            _Pragma("GCC unroll 8") for (int i = 0; i < M; i++) {                              \
                _Pragma("GCC unroll 4") for (int j = 0; j < NV - 1; j++)                       \
                    acc[i][j] = LD(C + i * ldc + j * VW);                                      \
                acc[i][NV - 1] = ISA(ldm)(C + i * ldc + (NV - 1) * VW, nlast);                 \
            }                                                                                  \
        } else {                                                                               \
            _Pragma("GCC unroll 8") for (int i = 0; i < M; i++)                                \
                _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[i][j] = (vf){0};      \
        }                                                                                      \
        _Pragma("GCC unroll 2") for (int k = 0; k < K; k++) {                                  \
            vf b[NV];                                                                          \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV - 1; j++) b[j] = LD(B + (long)k * ldb + j * VW); \
            b[NV - 1] = ISA(ldm)(B + (long)k * ldb + (NV - 1) * VW, nlast);                    \
            _Pragma("GCC unroll 8") for (int i = 0; i < M; i++) {                              \
                vf a = BC(A[AIDX]);                                                            \
                _Pragma("GCC unroll 4") for (int j = 0; j < NV; j++) acc[i][j] += a * b[j];    \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 8") for (int i = 0; i < M; i++) {                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < NV - 1; j++) ISA(st)(C + i * ldc + j * VW, acc[i][j]); \
            ISA(stm)(C + i * ldc + (NV - 1) * VW, acc[i][NV - 1], nlast);                      \
        }                                                                                      \
    }
#define FT_KM_IDX (long)k * lda + i
#define FT_IM_IDX (long)i * lda + k
#define DEFINE_FT_ROWS(NAME, AIDX, NV)                                                         \
    DEFINE_FT(NAME, AIDX, NV, 1) DEFINE_FT(NAME, AIDX, NV, 2) DEFINE_FT(NAME, AIDX, NV, 3)      \
    DEFINE_FT(NAME, AIDX, NV, 4) DEFINE_FT(NAME, AIDX, NV, 5) DEFINE_FT(NAME, AIDX, NV, 6)
DEFINE_FT_ROWS(ftkm, FT_KM_IDX, 1) DEFINE_FT_ROWS(ftkm, FT_KM_IDX, 2)
DEFINE_FT_ROWS(ftkm, FT_KM_IDX, 3) DEFINE_FT_ROWS(ftkm, FT_KM_IDX, 4)
DEFINE_FT_ROWS(ftim, FT_IM_IDX, 1) DEFINE_FT_ROWS(ftim, FT_IM_IDX, 2)
DEFINE_FT_ROWS(ftim, FT_IM_IDX, 3) DEFINE_FT_ROWS(ftim, FT_IM_IDX, 4)

typedef void (*ISA(ft_fn))(int, const float *, long, const float *, long, float *, long, int, int);
#define FT_ROW_TABLE(NAME, NV) \
    {0, ISA(NAME##_##NV##_1), ISA(NAME##_##NV##_2), ISA(NAME##_##NV##_3), ISA(NAME##_##NV##_4), ISA(NAME##_##NV##_5), ISA(NAME##_##NV##_6)}
static const ISA(ft_fn) ISA(ftkm_table)[5][7] = {
    {0}, FT_ROW_TABLE(ftkm, 1), FT_ROW_TABLE(ftkm, 2), FT_ROW_TABLE(ftkm, 3), FT_ROW_TABLE(ftkm, 4)};
static const ISA(ft_fn) ISA(ftim_table)[5][7] = {
    {0}, FT_ROW_TABLE(ftim, 1), FT_ROW_TABLE(ftim, 2), FT_ROW_TABLE(ftim, 3), FT_ROW_TABLE(ftim, 4)};

/* Column panels of a row of H floats: full panels of nvf vectors, then the rest (1..nvf-1
 * vectors). Panel q starts at column q * nvf * VW. */
static inline void ISA(lx_panel)(int H, int nvf, int q, int *nv, int *nlast) {
    const int nvec = (H + VW - 1) / VW, start = q * nvf;
    *nv = nvec - start < nvf ? nvec - start : nvf;
    const int last_col = (start + *nv - 1) * VW;
    *nlast = H - last_col < VW ? H - last_col : VW;
}

/* Logits kept transposed: zT[v][r] for the thread's vocabulary rows v and the block's
 * tokens r, so that every GEMM reads W, x and dW in place (no copy of W), softmax's
 * reductions over v run down columns, a vector holding VW tokens, and:
 *   forward  zT = W x^T        A = W rows (IM),        B = x^T of the block (packed, small)
 *   dW      += gT x            A = gT rows (IM),       B = x rows
 *   dx^T    += W^T gT          A = W (KM: k is v),     B = gT rows (tokens)              */
static void ISA(lx_task)(void *argp, int tid, int nth) {
    rk_lx_args *a = (rk_lx_args *)argp;
    const int H = a->H, V = a->V, grad = a->grad;
    const long N = a->N;
    const int nvf = VW == 16 ? 4 : 2, PW = nvf * VW, mr = 6, UNIT = 16;
    const int nunits = (V + UNIT - 1) / UNIT;
    int u0, u1;
    ISA(my_chunks)(nunits, tid, nth, &u0, &u1);
    const int v_lo = u0 * UNIT < V ? u0 * UNIT : V, v_hi = u1 * UNIT < V ? u1 * UNIT : V, Vt = v_hi - v_lo;
    const int R = a->rows; /* tokens a block, a multiple of VW */
    const long Rs = R + ((R * 4) % 4096 == 0 ? VW : 0); /* zT rows 4 KiB apart would share L1 sets */
    const int nvec = (H + VW - 1) / VW, nhp = (nvec + nvf - 1) / nvf;
    const long Ns0 = (N + VW - 1) / VW * VW, Ns = Ns0 + ((Ns0 * 4) % 4096 == 0 ? VW : 0);
    /* scratch: the block's logits zT (Vt x Rs), its x^T (H x R), per-token scratch (4 x R),
     * this thread's part of dx^T (H x Ns) and of the bias gradient */
    const size_t f_z = ((size_t)(Vt > 0 ? Vt : 1) * Rs + 15) / 16 * 16;
    const size_t f_xt = ((size_t)H * R + 15) / 16 * 16;
    const size_t f_tok = (size_t)4 * R;
    const size_t f_dx = grad ? ((size_t)H * Ns + 15) / 16 * 16 : 0;
    const size_t f_db = grad ? ((size_t)Vt + 15) / 16 * 16 : 0;
    float *z = rk_scratch(a->scratch, tid, (f_z + f_xt + f_tok + f_dx + f_db) * sizeof(float));
    int sense = 0;
    if (!z) a->failed = 1;
    rk_barrier_wait(a->barrier, &sense);
    if (a->failed) return;
    float *xT = z + f_z, *mx = xT + f_xt, *sm = mx + R, *zt = sm + R, *cs = zt + R, *dxp = mx + f_tok, *db = dxp + f_dx;
    a->dxp[tid] = dxp;
    if (grad) {
        for (int v = 0; v < Vt; v++) db[v] = 0.0f;
        if (Vt == 0) memset(dxp, 0, (size_t)H * Ns * sizeof(float)); /* no vocabulary: no part of dx */
    }
    float *part = a->part; /* (nth, N, 3): local max, local sum of exponentials, target logit */

    for (long r0 = 0; r0 < N; r0 += R) {
        const int rows = N - r0 < R ? (int)(N - r0) : R;
        const int nvr = (rows + VW - 1) / VW; /* vectors of tokens */
        const int rpad = nvr * VW;
        for (int k = 0; k < H; k++) { /* x^T, padded tokens 0 */
            float *dst = xT + (long)k * R;
            for (int j = 0; j < rows; j++) dst[j] = a->x[(r0 + j) * H + k];
            for (int j = rows; j < rpad; j++) dst[j] = 0.0f;
        }
        /* forward: zT[v][r] = W[v] . x[r] (the bias comes in the max pass) */
        for (int v = 0; v < Vt; v += mr) {
            const int m = Vt - v < mr ? Vt - v : mr;
            for (int p = 0; p * PW < rows; p++) {
                const int left = (rpad - p * PW) / VW, nv = left < nvf ? left : nvf;
                ISA(ftim_table)[nv][m](H, a->W + (long)(v_lo + v) * H, H, xT + p * PW, R, z + (long)v * Rs + p * PW, Rs,
                                       VW, 0);
            }
        }
        /* local softmax, VW tokens a vector: + bias and the max (NaN wins), then exp and sum */
        for (int j = 0; j < rpad; j++) { mx[j] = -INFINITY; sm[j] = 0.0f; }
        for (int v = 0; v < Vt; v++) {
            float *zr = z + (long)v * Rs;
            const vf b = BC(a->bias ? a->bias[v_lo + v] : 0.0f);
            for (int j = 0; j < rpad; j += VW) {
                vf zv = LD(zr + j) + b, m = LD(mx + j);
                ISA(st)(zr + j, zv);
                m = ISA(select)(zv > m, zv, m);
                ISA(st)(mx + j, ISA(select)(zv != zv, zv, m));
            }
        }
        for (int j = 0; j < rows; j++) {
            const long t = a->targets[r0 + j];
            zt[j] = t >= v_lo && t < v_hi ? z[(t - v_lo) * Rs + j] : 0.0f;
        }
        for (int v = 0; v < Vt; v++) {
            float *zr = z + (long)v * Rs;
            for (int j = 0; j < rpad; j += VW) {
                /* a token whose logits are all -inf in this thread's slice (tokens forbidden by a
                 * -inf bias): its local max is -inf, and -inf - -inf would be NaN; 0 gives e = 0 */
                vf m = LD(mx + j);
                m = ISA(select)(m == BC(-INFINITY), BC(0.0f), m);
                vf e = ISA(exp_neg)(LD(zr + j) - m);
                ISA(st)(zr + j, e);
                ISA(st)(sm + j, LD(sm + j) + e);
            }
        }
        for (int j = 0; j < rows; j++) {
            float *pr = part + ((long)tid * N + r0 + j) * 3;
            pr[0] = mx[j]; pr[1] = sm[j]; pr[2] = zt[j];
        }
        rk_barrier_wait(a->barrier, &sense);
        /* every thread combines the parts of each token; thread 0 writes the loss */
        for (int j = 0; j < rows; j++) {
            const long row = r0 + j, t = a->targets[row];
            float M = -INFINITY;
            int nan = 0;
            for (int u = 0; u < nth; u++) {
                const float m_u = part[((long)u * N + row) * 3];
                if (m_u != m_u) nan = 1;
                else if (m_u > M) M = m_u;
            }
            double S = 0.0;
            float ztt = 0.0f;
            for (int u = 0; u < nth; u++) {
                const float *pu = part + ((long)u * N + row) * 3;
                if (pu[1] > 0.0f) S += (double)pu[1] * exp((double)pu[0] - (double)M);
                int q0, q1;
                ISA(my_chunks)(nunits, u, nth, &q0, &q1);
                if (t >= (long)q0 * UNIT && t < (long)q1 * UNIT) ztt = pu[2];
            }
            if (nan) M = NAN;
            if (tid == 0) a->row_loss[row] = log(S) + (double)M - (double)ztt;
            if (grad) cs[j] = (float)((double)a->row_scale[row] * exp((double)mx[j] - (double)M) / S);
        }
        if (!grad) continue;
        for (int j = rows; j < rpad; j++) cs[j] = 0.0f; /* padded tokens: no gradient */
        /* g = c * e - target_scale at the target, in place; db[v] += sum over tokens */
        for (int v = 0; v < Vt; v++) {
            float *zr = z + (long)v * Rs;
            vf acc = BC(0.0f);
            for (int j = 0; j < rpad; j += VW) {
                vf g = LD(zr + j) * LD(cs + j);
                ISA(st)(zr + j, g);
                acc += g;
            }
            float s = 0.0f;
            for (int l = 0; l < VW; l++) s += acc[l];
            db[v] += s;
        }
        for (int j = 0; j < rows; j++) {
            const long t = a->targets[r0 + j];
            if (t >= v_lo && t < v_hi) {
                z[(t - v_lo) * Rs + j] -= a->target_scale[r0 + j];
                db[t - v_lo] -= a->target_scale[r0 + j];
            }
        }
        /* dW[v][h] += sum_r gT[v][r] x[r][h] */
        for (int v = 0; v < Vt; v += mr) {
            const int m = Vt - v < mr ? Vt - v : mr;
            for (int q = 0; q < nhp; q++) {
                int nv, nlast;
                ISA(lx_panel)(H, nvf, q, &nv, &nlast);
                const int h0 = q * nvf * VW;
                ISA(ftim_table)[nv][m](rows, z + (long)v * Rs, Rs, a->x + r0 * H + h0, H, a->dW + (long)(v_lo + v) * H + h0,
                                       H, nlast, 1);
            }
        }
        /* dx^T[h][r] (this thread's part) = sum_v W[v][h] gT[v][r], v in chunks: H is the
         * tile's rows (6 at a time), the tokens its vectors, so no lane is wasted on H's tail */
        const int KC = 256;
        for (int k0 = 0; k0 < Vt; k0 += KC) {
            const int kc = Vt - k0 < KC ? Vt - k0 : KC;
            for (int h = 0; h < H; h += mr) {
                const int m = H - h < mr ? H - h : mr;
                for (int p = 0; p * PW < rows; p++) {
                    const int left = (rpad - p * PW) / VW, nv = left < nvf ? left : nvf;
                    ISA(ftkm_table)[nv][m](kc, a->W + (long)(v_lo + k0) * H + h, H, z + (long)k0 * Rs + p * PW, Rs,
                                           dxp + (long)h * Ns + r0 + p * PW, Ns, VW, k0 > 0);
                }
            }
        }
    }
    if (!grad) return;
    for (int v = 0; v < Vt; v++) a->db[v_lo + v] += db[v];
    rk_barrier_wait(a->barrier, &sense); /* every thread's dx part is complete */
    const long n0 = N * tid / nth, n1 = N * (tid + 1) / nth;
    for (int h = 0; h < H; h++)
        for (long row = n0; row < n1; row++) {
            float s = 0.0f;
            for (int u = 0; u < nth; u++) s += a->dxp[u][h * Ns + row];
            a->dx[row * H + h] = s;
        }
}

#undef vf
#undef vi
#undef vfu
#undef LD
#undef LDN
#undef STN
#undef BC
#undef VW
#undef MR2
#undef MR3
#undef MR4
#undef ISA
